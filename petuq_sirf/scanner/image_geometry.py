"""The voxel grid of an image: shape ``(z, y, x)``, voxel sizes and position in mm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from petuq_sirf.scanner.layout import SinogramLayout


@dataclass(frozen=True)
class ImageGeometry:
    """A regular voxel grid centred on ``offset_mm`` (scanner centre = origin).

    Attributes:
        shape: number of voxels ``(z, y, x)``.
        voxel_size_mm: voxel size ``(dz, dy, dx)`` in mm.
        offset_mm: position of the grid centre ``(z, y, x)`` in mm.
    """

    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"image shape must be three positive sizes (z, y, x), got {self.shape}")
        if len(self.voxel_size_mm) != 3 or any(not float(v) > 0 for v in self.voxel_size_mm):
            raise ValueError(f"voxel sizes must be three positive lengths in mm (z, y, x), got {self.voxel_size_mm}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "voxel_size_mm", tuple(float(v) for v in self.voxel_size_mm))
        object.__setattr__(self, "offset_mm", tuple(float(v) for v in self.offset_mm))

    @property
    def num_voxels(self) -> int:
        z, y, x = self.shape
        return z * y * x

    def centres_mm(self, axis: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Voxel centre coordinates along ``axis`` (0 = z, 1 = y, 2 = x) in mm, shape ``(shape[axis],)``."""
        n = self.shape[axis]
        return (torch.arange(n, dtype=dtype) - (n - 1) / 2) * self.voxel_size_mm[axis] + self.offset_mm[axis]

    def first_voxel_mm(self, axis: int) -> float:
        n = self.shape[axis]
        return -(n - 1) / 2 * self.voxel_size_mm[axis] + self.offset_mm[axis]

    def meshgrid_mm(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coordinates ``(z, y, x)`` of every voxel centre, each shape ``(z, y, x)``."""
        return torch.meshgrid(*(self.centres_mm(a, dtype) for a in range(3)), indexing="ij")

    @classmethod
    def for_layout(
        cls, layout: SinogramLayout, num_xy: int | None = None, voxel_xy_mm: float | None = None
    ) -> ImageGeometry:
        """STIR's default image for a scanner: voxel = bin size in-plane, half a ring axially, ``2R-1`` slices."""
        sc = layout.scanner
        vxy = sc.default_bin_size_mm if voxel_xy_mm is None else float(voxel_xy_mm)
        n = layout.num_tangential if num_xy is None else int(num_xy)
        nz = 2 * sc.num_rings - 1
        dz = sc.ring_spacing_mm / 2 if sc.num_rings > 1 else sc.ring_spacing_mm
        return cls((nz, n, n), (dz, vxy, vxy))
