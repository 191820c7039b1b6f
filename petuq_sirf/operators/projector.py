"""Joseph ray-tracing projector with an exact matched back projector, in PyTorch.

Each LOR is sampled at every image plane perpendicular to its dominant in-plane axis
(x or y); at each plane the image is interpolated bilinearly in the other two axes
(Joseph 1982). The same ``(voxel index, weight)`` pairs serve the forward projection
(a gather) and the back projection (a scatter-add), so the back projector is the exact
adjoint. Small problems on the torch kernel cache the system matrix as a sparse CSR matrix; otherwise
LORs are projected on the fly by a kernel from :mod:`petuq_sirf.operators.kernels` (compiled numba on
the CPU, Triton on CUDA, plain torch as the fallback) using the ring-shift symmetry of sinograms,
with bounded temporaries. Every kernel has an explicit matched back projection.

Units: line integrals in mm (image values times path length).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from petuq_sirf.operators.base import LinearOperator
from petuq_sirf.operators.joseph_separable import SeparableJoseph
from petuq_sirf.operators.kernels import describe, report, select_kernel
from petuq_sirf.operators.kernels.plan import SinogramPlan, sinogram_plan, steps_along_x, transaxial_endpoints
from petuq_sirf.operators.kernels.torch_ring_shift import TorchSinogramKernels
from petuq_sirf.operators.kernels.triton_gpu import TritonSinogramKernels
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

_CACHE_LIMIT_ENTRIES = 40_000_000  # automatic sparse matrix with the torch kernel
# ... and with the compiled kernels: up to ~8 M entries the sparse matrix is faster than numba on the fly
# (benchmarks/bench_projector.py, 1 thread, one image: test-3d with 4 rings, 7.1 M entries, 0.125 vs 0.40 CPU-s
# per M LORs forward, 3.2x; `--batch 100`: 0.013 vs 0.283, 22x; +0.4 GB while it is built); at 28 M (test-3d) the two
# are level (0.24 vs 0.26) and the matrix costs 2.2 GB and 14 s to build, so numba stays the choice there
_SMALL_CACHE_ENTRIES = 1 << 23
_CHUNK_ELEMENTS = 1 << 23


def joseph_coefficients(
    p_a: torch.Tensor, p_b: torch.Tensor, image: ImageGeometry, plane_axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel indices and weights of LORs from ``p_a`` to ``p_b`` (mm, shape ``(L, 3)`` as x, y, z).

    ``plane_axis`` is the image axis stepped through (2 = x planes, 1 = y planes).
    Returns ``(index, weight)``, each shape ``(L, planes, 4)``: flat voxel indices into a
    ``(z, y, x)`` image and weights in mm (zero where the sample is outside the image).
    """
    nz, ny, nx = image.shape
    coord_of_axis = {2: 0, 1: 1, 0: 2}  # image axis -> endpoint coordinate column
    other_axis = 1 if plane_axis == 2 else 2
    d = p_b - p_a
    dp = d[:, coord_of_axis[plane_axis]]
    planes = image.centres_mm(plane_axis, dtype=p_a.dtype).to(p_a.device)
    t = (planes[None, :] - p_a[:, coord_of_axis[plane_axis], None]) / dp[:, None]  # (L, P)
    inside = (t >= 0) & (t <= 1)
    step = image.voxel_size_mm[plane_axis] * torch.linalg.norm(d, dim=1) / dp.abs()  # (L,)

    def split(axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = p_a[:, coord_of_axis[axis], None] + t * d[:, coord_of_axis[axis], None]
        f = (pos - image.first_voxel_mm(axis)) / image.voxel_size_mm[axis]
        i0 = torch.floor(f)
        return i0.long(), f - i0

    o0, fo = split(other_axis)
    n_other = image.shape[other_axis]
    if nz == 1:
        zpos = p_a[:, 2, None] + t * d[:, 2, None]
        in_slab = (zpos - image.offset_mm[0]).abs() <= image.voxel_size_mm[0] / 2 + 1e-9
        z0 = torch.zeros_like(o0)
        z_parts = [(z0, in_slab.to(t.dtype))]
    else:
        z0, fz = split(0)
        z_parts = [(z0, 1 - fz), (z0 + 1, fz)]
    o_parts = [(o0, 1 - fo), (o0 + 1, fo)]
    plane_index = torch.arange(image.shape[plane_axis], device=p_a.device)[None, :]
    strides = {0: ny * nx, 1: nx, 2: 1}
    indices, weights = [], []
    for zi, wz in z_parts:
        for oi, wo in o_parts:
            valid = inside & (zi >= 0) & (zi < nz) & (oi >= 0) & (oi < n_other)
            flat = (
                zi.clamp(0, nz - 1) * strides[0]
                + oi.clamp(0, n_other - 1) * strides[other_axis]
                + plane_index * strides[plane_axis]
            )
            indices.append(flat)
            weights.append(torch.where(valid, wz * wo * step[:, None], torch.zeros_like(t)))
    return torch.stack(indices, dim=-1), torch.stack(weights, dim=-1)


def restricted_projector(owner, views: np.ndarray, build):
    """The projector ``build(global_views)`` for a subset ``views`` of ``owner``'s views, memoised on ``owner``.

    ``owner.views`` (``None`` = all) maps the subset's indices to the layout's views; OSEM reuses subsets,
    so each is built once per owner.
    """
    views = np.asarray(views, dtype=np.int64)
    global_views = views if owner.views is None else owner.views[views]
    key = tuple(global_views.tolist())
    cache = owner.__dict__.setdefault("_restricted", {})
    if key not in cache:
        cache[key] = build(global_views)
    return cache[key]


class FlatKernelMixin:
    """Shape checks, batching and autograd of projectors built on two flat kernels.

    A class using it provides ``image_shape``, ``data_shape``, ``device``, ``dtype`` and the raw kernels
    ``_forward_flat`` / ``_adjoint_flat`` on ``(B, voxels) <-> (B, data)`` arrays; ``forward`` / ``adjoint``
    are then differentiable (each the other's gradient) over any leading batch dimensions.
    """

    image_shape: tuple[int, ...]
    data_shape: tuple[int, ...]
    _data_name = "projection data"

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
        n = len(shape)
        if t.dim() < n or tuple(t.shape[t.dim() - n :]) != tuple(shape):
            raise ValueError(f"{what} has shape {tuple(t.shape)}; expected (..., {', '.join(map(str, shape))})")
        return t.to(self.device, self.dtype)

    def _apply_flat(self, t: torch.Tensor, in_shape, out_shape, fn) -> torch.Tensor:
        batch = t.shape[: t.dim() - len(in_shape)]
        flat = t.reshape(-1, int(np.prod(in_shape)))
        return fn(flat).reshape(*batch, *out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project images ``(..., z, y, x)`` to data ``(..., *data_shape)`` (differentiable)."""
        return _Project.apply(self._check(x, self.image_shape, "image"), self)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Back project data ``(..., *data_shape)`` to images ``(..., z, y, x)`` (differentiable)."""
        return _BackProject.apply(self._check(y, self.data_shape, self._data_name), self)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


class RayTracingProjector(FlatKernelMixin, LinearOperator):
    """Geometric projector ``G`` from images ``(..., z, y, x)`` to sinograms ``(..., sinograms, views, tangential)``.

    Args:
        layout: the sinogram layout.
        image: the image grid.
        views: optional subset of view indices (for ordered subsets); data then has ``len(views)`` views.
        device: torch device for the coefficients and results.
        dtype: floating type of the weights (float32, or float64 for gradcheck).
        cache: keep the system matrix as sparse CSR (``None`` = automatically when small: up to 4 M
            entries with the compiled kernels, 40 M with torch; ``True`` forces the matrix whatever
            the kernel, ``False`` forbids it).
        kernel: ``auto`` | ``torch`` | ``numba`` | ``triton`` (``None`` = ``$PETUQ_PROJECTOR_KERNEL``,
            default ``auto``); see :mod:`petuq_sirf.operators.kernels`. :attr:`path` names what runs.

    The compiled kernels use as many threads as torch's intra-op pool (``torch.set_num_threads``).
    """

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        views: np.ndarray | list[int] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache: bool | None = None,
        kernel: str | None = None,
    ) -> None:
        self.layout = layout
        self.image = image
        self.views = None if views is None else np.asarray(views, dtype=np.int64)
        self.device = torch.device(device)
        self.dtype = dtype
        n_views = layout.num_views if self.views is None else len(self.views)
        self.data_shape = (layout.num_sinograms, n_views, layout.num_tangential)
        self.image_shape = image.shape
        self._requested_kernel = kernel
        self.kernel = select_kernel(kernel, self.device)
        self._plan: SinogramPlan | None = None
        self._kernels: object | None = None
        self._matrix: torch.Tensor | None = None
        self._matrix_t: torch.Tensor | None = None
        self._separable: SeparableJoseph | None = None
        self._p_a: torch.Tensor | None = None
        self._p_b: torch.Tensor | None = None
        self._groups: list[tuple[torch.Tensor, int]] = []
        if cache is None:
            limit = _CACHE_LIMIT_ENTRIES if self.kernel == "torch" else _SMALL_CACHE_ENTRIES
            cache = self._matrix_entries() <= limit
        self.cached = bool(cache)
        if self.cached:
            self.kernel = "torch"
            self._build_endpoints()
            self._build_matrix()
            self.path = "torch sparse matrix"
        else:
            self._plan = sinogram_plan(layout, image, self.views)
            if self._plan is None:
                if self.kernel != "torch":
                    warnings.warn(
                        f"projector kernel {self.kernel} cannot project oblique LORs into a single-slice image; "
                        "using torch",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                self.kernel = "torch"
                self._build_endpoints()
                self.path = "torch general (per LOR)"
            elif self.kernel == "numba":
                self.path = "numba ring-shift" if self._plan.ring_shift else "numba (per-sample axial)"
            elif self.kernel == "triton":
                self._kernels = TritonSinogramKernels(self._plan, self.device)
                self.path = "triton"
            elif self._plan.ring_shift:
                self._kernels = TorchSinogramKernels(self._plan, self.device, dtype)
                self.path = "torch ring-shift"
            else:
                p_a, p_b = transaxial_endpoints(layout, self.views)
                z_mid, dz = layout.sinogram_z_mm()
                self._separable = SeparableJoseph(
                    torch.as_tensor(p_a, dtype=dtype, device=self.device),
                    torch.as_tensor(p_b, dtype=dtype, device=self.device),
                    torch.as_tensor(z_mid - dz / 2, dtype=dtype, device=self.device),
                    torch.as_tensor(z_mid + dz / 2, dtype=dtype, device=self.device),
                    image,
                )
                self.path = "torch separable (per-sinogram axial)"
        report(self.kernel, self.device)

    def _matrix_entries(self) -> int:
        a, b = transaxial_endpoints(self.layout, self.views)
        d = b - a
        x_dom = steps_along_x(d[:, 0], d[:, 1])
        nz, ny, nx = self.image.shape
        per_sino = int(x_dom.sum()) * nx + int((~x_dom).sum()) * ny
        return per_sino * self.data_shape[0] * 4

    def _build_endpoints(self) -> None:
        """End points of every LOR (only for the sparse matrix and the general per-LOR path)."""
        p_a, p_b = self.layout.lor_endpoints(self.views)
        p_a, p_b = p_a.reshape(-1, 3), p_b.reshape(-1, 3)
        d = (p_b - p_a).to(torch.float64)  # the stepping axis from the exact end points, whatever self.dtype
        x_dominant = steps_along_x(d[:, 0], d[:, 1]).to(self.device)
        self._p_a = p_a.to(self.device, self.dtype)
        self._p_b = p_b.to(self.device, self.dtype)
        self._groups = [
            (torch.nonzero(x_dominant).squeeze(1), 2),
            (torch.nonzero(~x_dominant).squeeze(1), 1),
        ]

    def describe(self) -> str:
        """One line: which kernel and path run, on which device, with how many threads."""
        return f"{describe(self.kernel, self.device)}; path: {self.path}"

    def restricted(self, views: np.ndarray) -> RayTracingProjector:
        """A projector for a subset of this projector's views (memoised: subsets are reused by OSEM)."""
        return restricted_projector(
            self,
            views,
            lambda v: RayTracingProjector(
                self.layout, self.image, views=v, device=self.device, dtype=self.dtype, kernel=self._requested_kernel
            ),
        )

    @property
    def num_lors(self) -> int:
        return int(np.prod(self.data_shape))

    def _chunks(self, per_lor_elements: int):
        """Yield ``(lor_rows, index, weight)`` for chunks of LORs of bounded size."""
        for rows, axis in self._groups:
            size = max(1, _CHUNK_ELEMENTS // max(1, per_lor_elements * self.image.shape[axis] * 4))
            for start in range(0, len(rows), size):
                r = rows[start : start + size]
                idx, w = joseph_coefficients(self._p_a[r], self._p_b[r], self.image, axis)
                yield r, idx, w

    def _build_matrix(self) -> None:
        rows_all, cols_all, vals_all = [], [], []
        for r, idx, w in self._chunks(1):
            keep = w > 0
            rows_all.append(r[:, None, None].expand_as(idx)[keep])
            cols_all.append(idx[keep])
            vals_all.append(w[keep])
        rows = torch.cat(rows_all)
        cols = torch.cat(cols_all)
        vals = torch.cat(vals_all)
        self._matrix = _csr(rows, cols, vals, (self.num_lors, self.image.num_voxels))
        self._matrix_t = _csr(cols, rows, vals, (self.image.num_voxels, self.num_lors))

    # --- raw (non-autograd) kernels on flattened arrays: (B, nvox) -> (B, nlor) -----------------
    def _forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        if self._matrix is not None:
            return torch.sparse.mm(self._matrix, x.T.contiguous()).T
        if self.kernel == "numba":
            return _stack([_numba_forward(self._plan, xb) for xb in x])
        if self._kernels is not None:
            return _stack([self._kernels.forward(xb.reshape(self.image_shape)).reshape(-1) for xb in x])
        if self._separable is not None:
            return torch.stack([self._separable.forward(xb.reshape(self.image_shape)).reshape(-1) for xb in x])
        out = torch.zeros(x.shape[0], self.num_lors, dtype=x.dtype, device=x.device)
        for r, idx, w in self._chunks(x.shape[0]):
            out[:, r] = (x[:, idx] * w).sum(dim=(2, 3))
        return out

    def _adjoint_flat(self, y: torch.Tensor) -> torch.Tensor:
        if self._matrix_t is not None:
            return torch.sparse.mm(self._matrix_t, y.T.contiguous()).T
        S = self.data_shape[0]
        if self.kernel == "numba":
            return _stack([_numba_adjoint(self._plan, yb.reshape(S, -1)) for yb in y])
        if self._kernels is not None:
            return _stack([self._kernels.adjoint(yb.reshape(S, -1)).reshape(-1) for yb in y])
        if self._separable is not None:
            return torch.stack([self._separable.adjoint(yb.reshape(S, -1)).reshape(-1) for yb in y])
        out = torch.zeros(y.shape[0], self.image.num_voxels, dtype=y.dtype, device=y.device)
        for r, idx, w in self._chunks(y.shape[0]):
            contrib = y[:, r, None, None] * w
            out.index_add_(1, idx.reshape(-1), contrib.reshape(y.shape[0], -1))
        return out

    __call__ = FlatKernelMixin.__call__

    in_shape = property(lambda self: self.image_shape)  # LinearOperator shapes
    out_shape = property(lambda self: self.data_shape)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` without the copy for a single item (full-size images/sinograms)."""
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def _numba_forward(plan: SinogramPlan, x: torch.Tensor) -> torch.Tensor:
    """Numba sinogram forward of one flat image (CPU): returns the flat ``(S * Q)`` data."""
    from petuq_sirf.operators.kernels import numba_cpu

    numba_cpu.set_num_threads(torch.get_num_threads())
    nz, ny, nx = plan.image.shape
    img_t = np.ascontiguousarray(x.detach().reshape(nz, ny * nx).T.numpy())
    out = np.empty((plan.num_sinograms, plan.num_transaxial), dtype=img_t.dtype)
    numba_cpu.sinogram_forward(img_t, out, numba_cpu.num_threads(), *numba_cpu.plan_args(plan))
    return torch.from_numpy(out.reshape(-1))


def _numba_adjoint(plan: SinogramPlan, y: torch.Tensor) -> torch.Tensor:
    """Numba sinogram back projection of one ``(S, Q)`` data array (CPU): returns the flat image."""
    from petuq_sirf.operators.kernels import numba_cpu

    numba_cpu.set_num_threads(torch.get_num_threads())
    nz, ny, nx = plan.image.shape
    yn = np.ascontiguousarray(y.detach().numpy())
    img_t = np.zeros((ny * nx, nz), dtype=yn.dtype)
    threads = numba_cpu.num_threads()
    for ax in (2, 1):  # x-stepping LORs, then y-stepping ones (each pass writes disjoint plane bands per thread)
        numba_cpu.sinogram_back(yn, img_t, ax, threads, *numba_cpu.plan_args(plan))
    out = np.empty((nz, ny * nx), dtype=yn.dtype)
    numba_cpu.transpose_into(img_t, out)
    del img_t
    return torch.from_numpy(out.reshape(-1))


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR matrix from unique ``(row, col, value)`` triplets (int32 indices when they fit)."""
    order = torch.argsort(rows * shape[1] + cols)
    index_dtype = torch.int32 if max(shape) < 2**31 - 1 and len(vals) < 2**31 - 1 else torch.int64
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            crow.to(index_dtype), cols[order].to(index_dtype), vals[order], shape, check_invariants=False
        )


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, proj: RayTracingProjector) -> torch.Tensor:  # type: ignore[override]
        ctx.proj = proj
        return proj._apply_flat(x, proj.image_shape, proj.data_shape, proj._forward_flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        proj = ctx.proj
        return proj._apply_flat(grad.contiguous(), proj.data_shape, proj.image_shape, proj._adjoint_flat), None


class _BackProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, proj: RayTracingProjector) -> torch.Tensor:  # type: ignore[override]
        ctx.proj = proj
        return proj._apply_flat(y, proj.data_shape, proj.image_shape, proj._adjoint_flat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        proj = ctx.proj
        return proj._apply_flat(grad.contiguous(), proj.image_shape, proj.data_shape, proj._forward_flat), None
