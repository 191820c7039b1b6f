"""STIR's axial model of a bin as an option of the embedded projector: sub-rays across the axial sampling.

Our Joseph projector traces each bin as one line between the two ring centres. STIR's
``ProjMatrixByBinUsingRayTracing`` (and so SIRF's ``AcquisitionModelUsingRayTracingMatrix``) traces a
*tube*: a sinogram's axial sampling ``w`` (the ring spacing for a segment of one ring difference,
half of it for a merged, span > 1 segment; STIR's ``get_axial_sampling``) is covered by
``n = w / dz`` rays (``dz`` the image's slice thickness; STIR refuses non-integer ratios), spaced
``w / n`` apart about the bin's centre, each with weight ``1 / n``. With slices of half the ring
spacing, as STIR's default image has, a span-1 sinogram is two rays a quarter ring spacing either
side of the line, and a direct one spreads over three slices as (1/4, 1/2, 1/4): an end-ring
direct sinogram loses a quarter of its counts past the last slice. Which model to use is a
convention (a line, or a tube as wide as the ring); :class:`AxialTubeProjector` is the tube, so
that the embedded model can be the same as STIR's (``EmbeddedAcquisitionModel(axial_model="tube")``;
measured against STIR 6.5 in docs/sirf_stir.md).

Implementation: a ray shifted by ``+d`` in z through an image equals the unshifted ray through the
image's grid shifted by ``-d``, so each distinct offset is one :class:`RayTracingProjector` on a
shifted grid (any kernel, CPU or GPU, exact matched adjoint), and the sinograms that use it are
weighted: ``G x = sum_d W_d * P_d x``, ``G^T y = sum_d P_d^T (W_d y)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from petuq_sirf.operators.base import LinearOperator
from petuq_sirf.operators.projector import RayTracingProjector, restricted_projector
from petuq_sirf.operators.siddon import SiddonProjector
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

AXIAL_MODELS = ("line", "tube")
#: in-plane models of a ray: Joseph's bilinear interpolation (the default, fast kernels) or exact
#: intersection lengths with tangential sub-rays (STIR's, :mod:`petuq_sirf.operators.siddon`)
RAY_MODELS = ("joseph", "siddon")


def line_projector(
    layout: SinogramLayout,
    image: ImageGeometry,
    views: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    kernel: str | None = None,
    ray_model: str = "joseph",
    rays_per_bin: int = 1,
) -> RayTracingProjector | SiddonProjector:
    """The projector of one axial line per bin with the given in-plane ray model.

    ``rays_per_bin`` (tangential sub-rays, STIR's ``num_tangential_LORs``) needs ``ray_model="siddon"``;
    ``kernel`` applies to Joseph only. Raises ``ValueError`` with one line for unknown or inconsistent choices.
    """
    if ray_model not in RAY_MODELS:
        raise ValueError(f"unknown ray_model {ray_model!r}: choose one of {', '.join(RAY_MODELS)}")
    if int(rays_per_bin) < 1:
        raise ValueError(f"rays_per_bin must be >= 1, got {rays_per_bin}")
    if ray_model == "siddon":
        return SiddonProjector(layout, image, views, device, dtype, rays_per_bin=rays_per_bin)
    if int(rays_per_bin) != 1:
        raise ValueError(
            f"rays_per_bin={rays_per_bin} needs ray_model='siddon' (the Joseph projector traces one ray per bin)"
        )
    return RayTracingProjector(layout, image, views, device, dtype, kernel=kernel)


def axial_sampling_mm(layout: SinogramLayout) -> np.ndarray:
    """STIR's axial sampling of each sinogram (mm), shape ``(sinograms,)``.

    The ring spacing for a segment of a single ring difference, half of it for a merged one
    (``ProjDataInfoCylindrical::get_axial_sampling``).
    """
    sp = layout.scanner.ring_spacing_mm
    per_segment = np.array([sp / (2 if s.max_ring_difference != s.min_ring_difference else 1) for s in layout.segments])
    return per_segment[layout._sinogram_table["sino_segment"]]


def axial_subrays(layout: SinogramLayout, image: ImageGeometry) -> list[tuple[float, np.ndarray]]:
    """``(z offset in mm, weight per sinogram)`` of the tube's sub-rays, one entry per distinct offset.

    ``n = w / dz`` rays per sinogram at ``(i - (n - 1) / 2) w / n``, weight ``1 / n`` (a sinogram's
    weights sum to 1). Raises ``ValueError`` where ``w`` is not a whole number of slices, as STIR does.
    """
    if image.shape[0] == 1:  # a single slice: every bin is a line through it
        return [(0.0, np.ones(layout.num_sinograms))]
    dz = image.voxel_size_mm[0]
    weights: dict[float, np.ndarray] = {}
    for s, w in enumerate(axial_sampling_mm(layout)):
        n = int(math.ceil(w / dz - 1e-3))
        if abs(w / dz - n) > 1e-3:
            raise ValueError(
                f"the axial tube needs a slice thickness ({dz} mm) dividing the axial sampling ({w:.6g} mm), as STIR does"
            )
        for i in range(n):
            offset = round((i - (n - 1) / 2) * w / n, 9)
            weights.setdefault(offset, np.zeros(layout.num_sinograms))[s] += 1.0 / n
    return sorted(weights.items())


class AxialTubeProjector(LinearOperator):
    """The geometric projector with STIR's axial tube (see the module docstring); same interface as :class:`RayTracingProjector`.

    Args:
        layout, image, views, device, dtype, kernel: as for :class:`RayTracingProjector` (one per sub-ray offset).
        ray_model, rays_per_bin: the in-plane model of each sub-ray (:func:`line_projector`).
    """

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        views: np.ndarray | list[int] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        kernel: str | None = None,
        ray_model: str = "joseph",
        rays_per_bin: int = 1,
    ) -> None:
        self.layout = layout
        self.image = image
        self.views = None if views is None else np.asarray(views, dtype=np.int64)
        self.device = torch.device(device)
        self.dtype = dtype
        self._kernel = kernel
        self.ray_model = ray_model
        self.rays_per_bin = int(rays_per_bin)
        self.parts: list[tuple[RayTracingProjector | SiddonProjector, torch.Tensor]] = []
        z0, y0, x0 = image.offset_mm
        for offset, w in axial_subrays(layout, image):
            grid = ImageGeometry(image.shape, image.voxel_size_mm, (z0 - offset, y0, x0))
            proj = line_projector(layout, grid, self.views, self.device, dtype, kernel, ray_model, rays_per_bin)
            self.parts.append((proj, torch.as_tensor(w, dtype=dtype, device=self.device)[:, None, None]))
        first = self.parts[0][0]
        self.data_shape = first.data_shape
        self.image_shape = image.shape
        self.path = f"axial tube: {len(self.parts)} sub-ray offsets x ({first.path})"

    in_shape = property(lambda self: self.image_shape)
    out_shape = property(lambda self: self.data_shape)

    def describe(self) -> str:
        return f"{self.parts[0][0].describe()}; {len(self.parts)} axial sub-ray offsets (STIR's tube)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for proj, w in self.parts:
            y = proj.forward(x) * w.to(x.device)
            out = y if out is None else out + y
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        out = None
        for proj, w in self.parts:
            if w.shape[0] != y.shape[-3]:
                raise ValueError(f"projection data has shape {tuple(y.shape)}; expected (..., {self.data_shape})")
            x = proj.adjoint(y * w.to(y.device))
            out = x if out is None else out + x
        return out

    __call__ = forward

    def restricted(self, views: np.ndarray) -> AxialTubeProjector:
        """The same tube for a subset of this projector's views (memoised, as :meth:`RayTracingProjector.restricted`)."""
        return restricted_projector(
            self,
            views,
            lambda v: AxialTubeProjector(
                self.layout, self.image, v, self.device, self.dtype, self._kernel, self.ray_model, self.rays_per_bin
            ),
        )
