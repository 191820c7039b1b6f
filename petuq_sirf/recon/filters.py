"""Post-reconstruction filters."""

from __future__ import annotations

import torch

from petuq_sirf.operators.psf import GaussianPSF


def gaussian_postfilter(
    image: torch.Tensor, fwhm_mm: float | tuple[float, float, float], voxel_size_mm
) -> torch.Tensor:
    """Gaussian filter of ``image`` ``(..., z, y, x)`` with FWHM in mm (0 = no filtering).

    Count preserving: reflective (half-sample symmetric) boundaries, and no blur along an axis of a
    single voxel, so a 2D image (``nz == 1``) is filtered in-plane only and keeps its total.
    """
    return GaussianPSF(fwhm_mm, voxel_size_mm).forward(image)
