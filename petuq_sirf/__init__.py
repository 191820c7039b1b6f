"""petuq_sirf: uncertainty quantification for AI-based PET image reconstruction.

Layout (dependencies point downwards):
    scanner   -> geometry of named scanners, sinogram layout, image grids
    operators -> projector, PSF, the acquisition-model protocol
    backends  -> embedded (PyTorch), sirf, stir
    data      -> phantoms, physics, simulation, list-mode, file formats
    recon     -> MLEM/OSEM, MAP-RDP
    uq        -> figures of merit and uncertainty metrics
    viz, cli  -> figures and the ``petuq`` command
"""

__version__ = "0.1.0"
