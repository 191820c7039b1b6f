"""Exact intersection-length ray tracing (Siddon 1985) with tangential sub-rays: STIR's in-plane model of a bin.

The Joseph projector (:mod:`petuq_sirf.operators.projector`) interpolates the image bilinearly on the
planes a line crosses. STIR's ``ProjMatrixByBinUsingRayTracing`` (and so SIRF's
``AcquisitionModelUsingRayTracingMatrix``) instead gives each voxel the length of the line inside it,
and traces ``num_tangential_LORs`` parallel rays per bin, spaced ``sampling_s / n`` apart in the
tangential direction about the bin's line, each with weight ``1 / n``. ``sampling_s`` is the bin's own
tangential sampling, STIR's ``get_sampling_in_s(bin) = (s(k + 1) - s(k - 1)) / 2``: for non-arc-corrected
data with ``s(k) = R sin(k pi / N)`` that is ``R sin(pi / N) cos(k pi / N)`` (R the effective ring radius),
narrower towards the edge of the field of view. :class:`SiddonProjector` is that model,
so that the embedded backend can be the same operator as the external ones
(``EmbeddedAcquisitionModel(ray_model="siddon", rays_per_bin=2, axial_model="tube")``).

Details that make it STIR's and not only "a Siddon":

* A ray lying in a plane between two voxel rows (parallel to an axis, on a voxel boundary) is traced
  half a voxel either side with half the weight, as STIR's ``RayTraceVoxelsOnCartesianGrid`` does
  (otherwise rounding decides which row gets the whole line).
* Bins are whole lines, not segments between the two detectors: the parts of a grid that reach beyond
  the detector ring (corners of a large image) are traced as STIR traces them.
* Lengths are in mm over the whole (square) grid, i.e. STIR's unrestricted field of view on a grid
  padded by one zero voxel per side (:class:`~petuq_sirf.backends.bridge.RayTracingSettings`), in our
  units (STIR's are x-voxel units, converted by the adapters).

Implementation: per chunk of rays, the parameters of all plane crossings in x, y and z are computed,
clipped to the part of the ray inside the grid and sorted; consecutive crossings bound one voxel each
(the midpoint names it) and their distance is its length. The system matrix is kept as sparse CSR when
it is small (:data:`MATRIX_LIMIT_ENTRIES`); otherwise the coefficients are recomputed chunk by chunk on
every projection (bounded memory, slower). The back projection uses the same coefficients: it is the
exact adjoint.

Units: line integrals in mm (image values times path length).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from petuq_sirf.operators.base import LinearOperator
from petuq_sirf.operators.projector import FlatKernelMixin, _csr, restricted_projector
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

MATRIX_LIMIT_ENTRIES = 40_000_000  # sparse matrix up to this many (estimated) non-zeros, else on the fly
_CHUNK_ELEMENTS = 1 << 22  # ray x crossing elements per chunk
_PARALLEL_REL = 1e-9  # |d_axis| below this fraction of the ray length: the ray is parallel to that axis
_BOUNDARY_TOL = 1e-6  # in voxels: a parallel ray this close to a voxel boundary lies on it
_COORD_OF_AXIS = {0: 2, 1: 1, 2: 0}  # image axis (z, y, x) -> end-point column (x, y, z)


def tangential_sampling_mm(layout: SinogramLayout) -> np.ndarray:
    """Tangential sampling of each tangential bin (mm), shape ``(tangential,)``.

    STIR's ``get_sampling_in_s(bin) = (s(k + 1) - s(k - 1)) / 2`` with ``s(k) = R sin(k a)``, ``a = pi / N``:
    ``R sin(a) cos(k a)``.
    """
    a = layout.angular_increment_rad
    return layout.scanner.effective_radius_mm * math.sin(a) * np.cos(layout.tangential_indices() * a)


def tangential_offsets_mm(layout: SinogramLayout, rays_per_bin: int) -> np.ndarray:
    """Tangential offsets (mm) of the sub-rays of each tangential bin, shape ``(rays_per_bin, tangential)``.

    ``(j - (n - 1) / 2) sampling_s(k) / n`` for ray ``j = 0 .. n - 1`` of bin ``k`` (:func:`tangential_sampling_mm`).
    """
    n = int(rays_per_bin)
    if n < 1:
        raise ValueError(f"rays_per_bin must be >= 1, got {rays_per_bin}")
    return (np.arange(n)[:, None] - (n - 1) / 2) * tangential_sampling_mm(layout)[None, :] / n


def _split_boundary_rays(
    p_a: torch.Tensor, p_b: torch.Tensor, ray: torch.Tensor, weight: torch.Tensor, image: ImageGeometry
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace each ray lying on a voxel boundary (parallel to an axis) by two rays half a voxel either side."""
    length = torch.linalg.norm(p_b - p_a, dim=1)
    for axis in (0, 1, 2):
        c = _COORD_OF_AXIS[axis]
        v = image.voxel_size_mm[axis]
        lower = image.first_voxel_mm(axis) - v / 2
        parallel = (p_b[:, c] - p_a[:, c]).abs() <= _PARALLEL_REL * length
        u = (p_a[:, c] - lower) / v
        on = parallel & ((u - torch.round(u)).abs() < _BOUNDARY_TOL)
        if not bool(on.any()):
            continue
        shift = torch.zeros(3, dtype=p_a.dtype, device=p_a.device)
        shift[c] = v / 2
        keep = ~on
        p_a = torch.cat([p_a[keep], p_a[on] - shift, p_a[on] + shift])
        p_b = torch.cat([p_b[keep], p_b[on] - shift, p_b[on] + shift])
        ray = torch.cat([ray[keep], ray[on], ray[on]])
        weight = torch.cat([weight[keep], weight[on] / 2, weight[on] / 2])
        length = torch.linalg.norm(p_b - p_a, dim=1)
    return p_a, p_b, ray, weight


def siddon_coefficients(
    p_a: torch.Tensor,
    p_b: torch.Tensor,
    image: ImageGeometry,
    weight: torch.Tensor | None = None,
    whole_line: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel indices and intersection lengths of the segments from ``p_a`` to ``p_b`` (mm, ``(L, 3)`` as x, y, z).

    ``weight`` (shape ``(L,)``, default ones) multiplies each ray's lengths. ``whole_line`` traces the
    infinite lines through the two points instead of the segments (STIR's LORs: voxels of a grid that
    reaches beyond the detector ring are traced too). Returns ``(ray, index, length)``:
    ``ray`` shape ``(L',)`` the input row of each traced ray (``L' >= L``: rays on a voxel boundary are traced
    twice with half the weight), ``index`` and ``length`` shape ``(L', K)``: flat indices into a ``(z, y, x)``
    image and weighted lengths in mm (zero where unused). Computed in the dtype of ``p_a`` (use float64).
    """
    L = p_a.shape[0]
    ray = torch.arange(L, device=p_a.device)
    w = torch.ones(L, dtype=p_a.dtype, device=p_a.device) if weight is None else weight.to(p_a.dtype)
    p_a, p_b, ray, w = _split_boundary_rays(p_a, p_b, ray, w, image)
    d = p_b - p_a
    length = torch.linalg.norm(d, dim=1)
    a_min = torch.full_like(length, -math.inf if whole_line else 0.0)
    a_max = torch.full_like(length, math.inf if whole_line else 1.0)
    crossings = []
    for axis in (0, 1, 2):
        c = _COORD_OF_AXIS[axis]
        n, v = image.shape[axis], image.voxel_size_mm[axis]
        lower = image.first_voxel_mm(axis) - v / 2
        upper = lower + n * v
        dc = d[:, c]
        parallel = dc.abs() <= _PARALLEL_REL * length
        safe = torch.where(parallel, torch.ones_like(dc), dc)
        planes = lower + v * torch.arange(n + 1, dtype=p_a.dtype, device=p_a.device)
        alpha = (planes[None, :] - p_a[:, c, None]) / safe[:, None]  # (L', n + 1)
        lo = torch.minimum(alpha[:, 0], alpha[:, -1])
        hi = torch.maximum(alpha[:, 0], alpha[:, -1])
        inside = (p_a[:, c] > lower) & (p_a[:, c] < upper)
        lo = torch.where(parallel, torch.where(inside, -math.inf, math.inf), lo)
        hi = torch.where(parallel, torch.where(inside, math.inf, -math.inf), hi)
        a_min = torch.maximum(a_min, lo)
        a_max = torch.minimum(a_max, hi)
        crossings.append(torch.where(parallel[:, None], torch.zeros_like(alpha), alpha))
    hit = a_max > a_min
    a_hi = torch.where(hit, a_max, a_min)
    a = torch.cat([*crossings, a_min[:, None], a_hi[:, None]], dim=1)
    a = torch.minimum(torch.maximum(a, a_min[:, None]), a_hi[:, None])
    a, _ = torch.sort(a, dim=1)
    seg = (a[:, 1:] - a[:, :-1]) * length[:, None]
    mid = 0.5 * (a[:, 1:] + a[:, :-1])
    valid = seg > 0
    flat = torch.zeros_like(seg, dtype=torch.long)
    strides = {0: image.shape[1] * image.shape[2], 1: image.shape[2], 2: 1}
    for axis in (0, 1, 2):
        c = _COORD_OF_AXIS[axis]
        n, v = image.shape[axis], image.voxel_size_mm[axis]
        lower = image.first_voxel_mm(axis) - v / 2
        i = torch.floor((p_a[:, c, None] + mid * d[:, c, None] - lower) / v).long()
        valid &= (i >= 0) & (i < n)
        flat += i.clamp(0, n - 1) * strides[axis]
    return ray, flat, torch.where(valid, seg * w[:, None], torch.zeros_like(seg))


class SiddonProjector(FlatKernelMixin, LinearOperator):
    """Geometric projector with exact intersection lengths and ``rays_per_bin`` tangential sub-rays.

    Images ``(..., z, y, x)`` to sinograms ``(..., sinograms, views, tangential)``; same interface as
    :class:`~petuq_sirf.operators.projector.RayTracingProjector` (forward, adjoint, restricted, describe).

    Args:
        layout: the sinogram layout.
        image: the image grid.
        views: optional subset of view indices (for ordered subsets).
        device: torch device of the coefficients and results.
        dtype: floating type of the weights (coefficients are computed in float64, then cast).
        rays_per_bin: tangential sub-rays per bin (STIR's ``num_tangential_LORs``).
        cache: keep the system matrix as sparse CSR (``None`` = when the estimate is at most
            :data:`MATRIX_LIMIT_ENTRIES` non-zeros; otherwise coefficients are recomputed per projection).
    """

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        views: np.ndarray | list[int] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        rays_per_bin: int = 1,
        cache: bool | None = None,
    ) -> None:
        self.layout = layout
        self.image = image
        self.views = None if views is None else np.asarray(views, dtype=np.int64)
        self.device = torch.device(device)
        self.dtype = dtype
        self.rays_per_bin = int(rays_per_bin)
        self.offsets_mm = tangential_offsets_mm(layout, self.rays_per_bin)
        n_views = layout.num_views if self.views is None else len(self.views)
        self.data_shape = (layout.num_sinograms, n_views, layout.num_tangential)
        self.image_shape = image.shape
        self.kernel = "torch"
        p_a, p_b = layout.lor_endpoints(self.views)
        self._p_a = p_a.reshape(-1, 3).to(self.device)
        self._p_b = p_b.reshape(-1, 3).to(self.device)
        d = self._p_b - self._p_a
        perp = torch.stack([-d[:, 1], d[:, 0], torch.zeros_like(d[:, 0])], dim=1)
        self._perp = perp / torch.linalg.norm(perp, dim=1, keepdim=True).clamp_min(1e-12)
        # offset of each sub-ray of each LOR (flat order: sinograms, views, tangential), shape (rays, LORs)
        offsets = torch.as_tensor(self.offsets_mm, dtype=torch.float64, device=self.device)
        self._offsets = offsets.repeat(1, self.data_shape[0] * self.data_shape[1])
        self._crossings = sum(image.shape) + 4
        self._matrix: torch.Tensor | None = None
        self._matrix_t: torch.Tensor | None = None
        if cache is None:
            cache = self._estimated_entries() <= MATRIX_LIMIT_ENTRIES
        self.cached = bool(cache)
        if self.cached:
            self._build_matrix()
            self.path = f"siddon sparse matrix, {self.rays_per_bin} ray(s) per bin"
        else:
            self.path = f"siddon on the fly, {self.rays_per_bin} ray(s) per bin"

    @property
    def num_lors(self) -> int:
        return int(np.prod(self.data_shape))

    def _estimated_entries(self) -> int:
        """Upper estimate of the non-zeros: each ray crosses at most ``nx + ny + nz`` voxels."""
        nz, ny, nx = self.image.shape
        return self.num_lors * self.rays_per_bin * (nx + ny + nz)

    def describe(self) -> str:
        return f"exact intersection lengths (Siddon) in torch on {self.device}; path: {self.path}"

    def _chunks(self):
        """Yield ``(lor_rows, index, length)`` of chunks of LORs, all sub-rays of a LOR in the same chunk."""
        size = max(1, _CHUNK_ELEMENTS // (self._crossings * self.rays_per_bin))
        w = torch.full((1,), 1.0 / self.rays_per_bin, dtype=torch.float64, device=self.device)
        for start in range(0, self.num_lors, size):
            rows = torch.arange(start, min(start + size, self.num_lors), device=self.device)
            p_a, p_b, perp = self._p_a[rows], self._p_b[rows], self._perp[rows]
            shifts = [self._offsets[j, rows, None] * perp for j in range(self.rays_per_bin)]
            pa = torch.cat([p_a + sh for sh in shifts])
            pb = torch.cat([p_b + sh for sh in shifts])
            ray, idx, length = siddon_coefficients(pa, pb, self.image, w.expand(pa.shape[0]), whole_line=True)
            yield rows[ray % len(rows)], idx, length.to(self.dtype)

    def _build_matrix(self) -> None:
        rows_all, cols_all, vals_all = [], [], []
        for r, idx, w in self._chunks():
            keep = w > 0
            rows_all.append(r[:, None].expand_as(idx)[keep])
            cols_all.append(idx[keep])
            vals_all.append(w[keep])
        rows, cols, vals = torch.cat(rows_all), torch.cat(cols_all), torch.cat(vals_all)
        # sub-rays of one bin meet the same voxels: sum duplicate (row, column) pairs
        key = rows * self.image.num_voxels + cols
        key, inverse = torch.unique(key, sorted=True, return_inverse=True)
        summed = torch.zeros(len(key), dtype=vals.dtype, device=vals.device).index_add_(0, inverse, vals)
        rows, cols = key // self.image.num_voxels, key % self.image.num_voxels
        self._matrix = _csr(rows, cols, summed, (self.num_lors, self.image.num_voxels))
        self._matrix_t = _csr(cols, rows, summed, (self.image.num_voxels, self.num_lors))

    def restricted(self, views: np.ndarray) -> SiddonProjector:
        """A projector for a subset of this projector's views (memoised: OSEM reuses subsets)."""
        return restricted_projector(
            self,
            views,
            lambda v: SiddonProjector(self.layout, self.image, v, self.device, self.dtype, self.rays_per_bin),
        )

    # --- flat kernels (B, nvox) <-> (B, nlor), used by the autograd functions of projector.py --------
    def _forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        if self._matrix is not None:
            return torch.sparse.mm(self._matrix, x.T.contiguous()).T
        out = torch.zeros(x.shape[0], self.num_lors, dtype=x.dtype, device=x.device)
        for r, idx, w in self._chunks():
            out.index_add_(1, r, (x[:, idx] * w).sum(dim=2))
        return out

    def _adjoint_flat(self, y: torch.Tensor) -> torch.Tensor:
        if self._matrix_t is not None:
            return torch.sparse.mm(self._matrix_t, y.T.contiguous()).T
        out = torch.zeros(y.shape[0], self.image.num_voxels, dtype=y.dtype, device=y.device)
        for r, idx, w in self._chunks():
            out.index_add_(1, idx.reshape(-1), (y[:, r, None] * w).reshape(y.shape[0], -1))
        return out

    __call__ = FlatKernelMixin.__call__

    in_shape = property(lambda self: self.image_shape)
    out_shape = property(lambda self: self.data_shape)
