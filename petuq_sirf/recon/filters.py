"""Post-reconstruction filters."""

from __future__ import annotations

import torch

from petuq_sirf.operators.psf import GaussianPSF


def gaussian_postfilter(
    image: torch.Tensor, fwhm_mm: float | tuple[float, float, float], voxel_size_mm
) -> torch.Tensor:
    """Gaussian filter of ``image`` ``(..., z, y, x)`` with FWHM in mm (0 = no filtering)."""
    return GaussianPSF(fwhm_mm, voxel_size_mm).forward(image)
