"""Image-space resolution model: a separable Gaussian blur (self-adjoint, count preserving)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from petuq_sirf.operators.base import LinearOperator

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_kernel_1d(fwhm_mm: float, voxel_mm: float, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1D Gaussian sampled at voxel centres; ``[1.]`` when ``fwhm_mm`` is 0."""
    if fwhm_mm < 0:
        raise ValueError(f"PSF FWHM must be >= 0 mm, got {fwhm_mm}")
    if fwhm_mm == 0:
        return torch.ones(1, dtype=torch.float64)
    sigma = fwhm_mm * _FWHM_TO_SIGMA / voxel_mm
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def reflect_indices(n: int, radius: int) -> torch.Tensor:
    """Indices ``(n + 2 radius,)`` of a half-sample symmetric extension (``... 1 0 | 0 1 ... n-1 | n-1 n-2 ...``).

    Mirrors repeatedly when ``radius > n`` (a single slice extends to copies of itself).
    """
    p = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(p >= n, 2 * n - 1 - p, p)


class GaussianPSF(LinearOperator):
    """Gaussian blur of images ``(..., z, y, x)`` with FWHM ``(z, y, x)`` in mm.

    Boundaries are half-sample symmetric (reflective): with a symmetric kernel the operator matrix is
    symmetric and doubly stochastic, so it is exactly self-adjoint, keeps a constant image constant and
    preserves the total of every image (end slices keep their counts). An axis with a single voxel
    (``nz == 1``) is not blurred. Axes whose FWHM is 0 are skipped.
    ``image_shape`` ``(z, y, x)`` is only needed for :meth:`adjointness_test`, :meth:`norm` and composition checks.
    """

    def __init__(
        self,
        fwhm_mm: tuple[float, float, float] | float,
        voxel_size_mm: tuple[float, float, float],
        image_shape: tuple[int, int, int] | None = None,
    ):
        self._image_shape = None if image_shape is None else tuple(image_shape)
        fwhm = (fwhm_mm,) * 3 if isinstance(fwhm_mm, (int, float)) else tuple(fwhm_mm)
        if len(fwhm) != 3:
            raise ValueError(f"PSF FWHM must be a number or (z, y, x) in mm, got {fwhm_mm}")
        self.fwhm_mm = tuple(float(f) for f in fwhm)
        self.kernels = [gaussian_kernel_1d(f, v) for f, v in zip(self.fwhm_mm, voxel_size_mm)]
        self._index: dict[tuple[int, int], torch.Tensor] = {}

    def _extended(self, x: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
        n = x.shape[2 + axis]
        key = (n, radius)
        if key not in self._index:
            self._index[key] = reflect_indices(n, radius)
        return torch.index_select(x, 2 + axis, self._index[key].to(x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = x.reshape(-1, 1, *shape[-3:])
        for axis, k in enumerate(self.kernels):
            if k.numel() == 1 or shape[len(shape) - 3 + axis] == 1:
                continue  # no blur along a single voxel: reflection would return the voxel itself
            w = k.to(dtype=x.dtype, device=x.device)
            view = [1, 1, 1, 1, 1]
            view[2 + axis] = -1
            out = F.conv3d(self._extended(out, axis, (k.numel() - 1) // 2), w.reshape(view))
        return out.reshape(shape)

    adjoint = forward

    @property
    def in_shape(self) -> tuple[int, ...]:
        if self._image_shape is None:
            raise ValueError(
                "this GaussianPSF was built without image_shape: pass GaussianPSF(..., image_shape=(z, y, x))"
            )
        return self._image_shape

    out_shape = in_shape
