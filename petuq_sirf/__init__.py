"""petuq_sirf: uncertainty quantification for AI-based PET image reconstruction.

Layers (dependencies point downwards; checked by ``lint-imports``, see docs/architecture.md)::

    cli         the ``petuq`` command
    pipelines   end-to-end runs: reconstruction by method name, network training, list-mode, the demo
    viz         figures
    bootstrap   posterior bootstrap of list-mode data (event weights, replicates, executors, store)
    bayes       Bayesian denoisers (SVI BNN, PMC, MC dropout, ensembles), their training sets and checkpoints
    recon       MLEM/OSEM, MAP-RDP, PnP-ADMM, unrolled FBSEM with weight posteriors, trained weights
    uq          coverage, calibration, CRPS, conformal scales, figures of merit
    inference   SVI, PMC adaptive importance sampling, weight posteriors, posterior samples
    networks    convolution stacks and the heteroscedastic training loss
    simulation  phantoms, attenuation / normalisation / randoms / scatter, simulate, list-mode draws
    backends    embedded (PyTorch), sirf, stir: ``ybar = m * G x + b`` behind one protocol
    io          Interfile, NIfTI, mMR list-mode, PETSIRD, acquisition folders, weight files
    operators   LinearOperator base, projector, PSF, the AcquisitionModel protocol
    scanner     named scanners, sinogram layout, image grids

The names below are importable from the top level (``import petuq_sirf as pq; pq.simulate(...)``); each is
loaded on first use, so ``import petuq_sirf`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # scanner, operators
    "get_scanner": "scanner",
    "scanner_names": "scanner",
    "SinogramLayout": "scanner",
    "ImageGeometry": "scanner",
    "AcquisitionModel": "operators",
    "LinearOperator": "operators",
    "GaussianPSF": "operators",
    "RayTracingProjector": "operators",
    # io, backends
    "Acquisition": "io",
    "ListModeEvents": "io",
    "load_acquisition": "io",
    "save_acquisition": "io",
    "EmbeddedAcquisitionModel": "backends",
    "make_acquisition_model": "backends",
    "acquisition_model_for": "backends",
    "available_backends": "backends",
    # simulation
    "SimulationConfig": "simulation",
    "SimulatedAcquisition": "simulation",
    "simulate": "simulation",
    "nema_iec_phantom": "simulation",
    "brain_phantom": "simulation",
    "random_ellipses_phantom": "simulation",
    "events_from_counts": "simulation",
    # reconstruction
    "osem": "recon",
    "mlem": "recon",
    "map_rdp": "recon",
    "RelativeDifferencePrior": "recon",
    "gaussian_postfilter": "recon",
    "pnp_admm_posterior": "recon",
    "PnPADMMConfig": "recon",
    "predict_unrolled": "recon",
    "load_network": "recon",
    # Bayesian denoisers, posterior bootstrap
    "DenoiserConfig": "bayes",
    "make_denoiser": "bayes",
    "load_denoiser": "bayes",
    "save_denoiser": "bayes",
    "BootstrapConfig": "bootstrap",
    "BootstrapProblem": "bootstrap",
    "prepare_problem": "bootstrap",
    "run_bootstrap": "bootstrap",
    "summarise_store": "bootstrap",
    # end-to-end
    "acquisition_from_listmode": "pipelines",
    "reconstruct": "pipelines",
    "ReconstructionSettings": "pipelines",
    # uncertainty metrics
    "coverage_curve": "uq",
    "calibration_error": "uq",
    "crps": "uq",
    "image_metrics": "uq",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    package = _EXPORTS.get(name)
    if package is None:
        raise AttributeError(f"module 'petuq_sirf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"petuq_sirf.{package}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
