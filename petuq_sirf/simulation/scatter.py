"""A smooth scatter model scaled to a chosen scatter fraction.

Single-scatter distributions are broad and smooth; we model them (in the spirit of the
convolution-subtraction methods of Bergstrom et al. 1983) as the attenuated, normalised
emission sinogram blurred by a wide Gaussian along the tangential direction (default FWHM
150 mm) and mildly across views and sinograms, then scaled so that
``scatter / (trues + scatter)`` equals the requested fraction. Tails extend beyond the object,
as measured scatter does. It is a plausible additive background, not a Monte-Carlo estimate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from petuq_sirf.operators.psf import gaussian_kernel_1d
from petuq_sirf.scanner.layout import SinogramLayout


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int, circular: bool) -> torch.Tensor:
    if kernel.numel() == 1 or x.shape[axis] == 1:
        return x
    moved = x.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    r = (kernel.numel() - 1) // 2
    if circular:
        r = min(r, shape[-1] - 1)
        kernel = kernel[(kernel.numel() - 1) // 2 - r : (kernel.numel() - 1) // 2 + r + 1]
        kernel = kernel / kernel.sum()
        flat = F.pad(flat, (r, r), mode="circular")
        out = F.conv1d(flat, kernel.to(x)[None, None])
    else:
        out = F.conv1d(flat, kernel.to(x)[None, None], padding=r)
    return out.reshape(shape).movedim(-1, axis)


def scatter_sinogram(
    layout: SinogramLayout,
    attenuated_emission: torch.Tensor,
    scatter_fraction: float,
    efficiency: torch.Tensor | None = None,
    tangential_fwhm_mm: float = 150.0,
    view_fwhm_deg: float = 20.0,
    axial_fwhm_mm: float = 40.0,
) -> torch.Tensor:
    """Scatter counts per bin, shape ``layout.shape``.

    ``attenuated_emission`` is ``att * G x`` in counts before detector efficiency; trues are
    ``efficiency * attenuated_emission``. The blurred distribution is multiplied by the detector
    efficiency and scaled so that ``sum(scatter) / sum(trues + scatter) = scatter_fraction``.
    """
    if not 0 <= scatter_fraction < 1:
        raise ValueError(f"scatter fraction must be in [0, 1), got {scatter_fraction}")
    t = torch.as_tensor(attenuated_emission, dtype=torch.float32)
    if tuple(t.shape) != layout.shape:
        raise ValueError(f"emission sinogram has shape {tuple(t.shape)}, expected {layout.shape}")
    eff = torch.ones_like(t) if efficiency is None else torch.as_tensor(efficiency, dtype=torch.float32)
    trues = (t * eff).sum()
    if scatter_fraction == 0 or trues <= 0:
        return torch.zeros_like(t)
    bin_mm = layout.scanner.default_bin_size_mm
    view_deg = 180.0 / layout.num_views
    out = _blur_axis(t, gaussian_kernel_1d(tangential_fwhm_mm, bin_mm, truncate=2.5).float(), 2, circular=False)
    out = _blur_axis(out, gaussian_kernel_1d(view_fwhm_deg, view_deg, truncate=2.5).float(), 1, circular=True)
    out = _blur_axis(out, gaussian_kernel_1d(axial_fwhm_mm, layout.scanner.ring_spacing_mm).float(), 0, circular=False)
    out = out.clamp_min(0) * eff
    total_scatter = scatter_fraction / (1 - scatter_fraction) * trues
    return out * (total_scatter / out.sum())
