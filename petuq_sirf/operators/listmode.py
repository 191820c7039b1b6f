"""List-mode projector: forward and back projection for an explicit list of LORs, with per-LOR weights.

The same Joseph weights as :class:`~petuq_sirf.operators.projector.RayTracingProjector`, LOR by LOR,
on the kernel chosen as for the sinogram projector (numba on the CPU, Triton on CUDA, torch as the
fallback). Built from end points in mm, or from list-mode events that index sinogram bins
(:class:`~petuq_sirf.io.listmode.ListModeEvents` ``bins``), so the bootstrap and confidence sets can
work on events directly: ``forward(x)[i] = w_i (G x)_i`` and ``adjoint(y) = sum_i w_i y_i g_i``.

Memory: the end points are kept in float64, 48 bytes per LOR.
"""

from __future__ import annotations

import numpy as np
import torch

from petuq_sirf.operators.kernels import describe, report, select_kernel
from petuq_sirf.operators.kernels.plan import steps_along_x, transaxial_endpoints
from petuq_sirf.operators.projector import _CHUNK_ELEMENTS, FlatKernelMixin, _stack, joseph_coefficients
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout


class ListModeProjector(FlatKernelMixin):
    """Projector from images ``(..., z, y, x)`` to LOR values ``(..., N)`` for ``N`` explicit LORs.

    Args:
        image: the image grid.
        p_a_mm, p_b_mm: LOR end points ``(N, 3)`` as ``(x, y, z)`` in mm.
        weights: per-LOR factor ``(N,)`` (default ones), e.g. event weights or normalisation.
        device, dtype: as for :class:`~petuq_sirf.operators.projector.RayTracingProjector`.
        kernel: ``auto`` | ``torch`` | ``numba`` | ``triton`` (``None`` = ``$PETUQ_PROJECTOR_KERNEL``).
    """

    _data_name = "LOR values"

    def __init__(
        self,
        image: ImageGeometry,
        p_a_mm: np.ndarray | torch.Tensor,
        p_b_mm: np.ndarray | torch.Tensor,
        weights: np.ndarray | torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        kernel: str | None = None,
    ) -> None:
        self.image = image
        self.device = torch.device(device)
        self.dtype = dtype
        self.kernel = select_kernel(kernel, self.device)
        p_a = torch.as_tensor(p_a_mm, dtype=torch.float64)
        p_b = torch.as_tensor(p_b_mm, dtype=torch.float64)
        if p_a.dim() != 2 or p_a.shape[1] != 3 or p_a.shape != p_b.shape:
            raise ValueError(f"LOR end points must both have shape (N, 3); got {tuple(p_a.shape)}, {tuple(p_b.shape)}")
        if not (torch.isfinite(p_a).all() and torch.isfinite(p_b).all()):
            raise ValueError("LOR end points must be finite")
        if ((p_b - p_a)[:, :2] == 0).all(dim=1).any():
            raise ValueError("LORs parallel to the scanner axis cannot be projected (zero transaxial length)")
        n = p_a.shape[0]
        w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if tuple(w.shape) != (n,):
            raise ValueError(f"weights have shape {tuple(w.shape)}; expected ({n},)")
        self._p_a = p_a.contiguous().to(self.device)
        self._p_b = p_b.contiguous().to(self.device)
        self._w = w.contiguous().to(self.device)
        self.image_shape = image.shape
        self.data_shape = (n,)
        self.path = f"{self.kernel} per LOR"
        report(self.kernel, self.device)

    @classmethod
    def from_bins(
        cls,
        layout: SinogramLayout,
        image: ImageGeometry,
        bins: np.ndarray,
        weights: np.ndarray | torch.Tensor | None = None,
        **kwargs,
    ) -> ListModeProjector:
        """LORs of sinogram bins (flat C-order indices into ``layout.shape``), as in list-mode events."""
        bins = np.asarray(bins, dtype=np.int64)
        if bins.ndim != 1 or (len(bins) and (bins.min() < 0 or bins.max() >= layout.num_bins)):
            raise ValueError(f"bins must be flat indices into a sinogram of shape {layout.shape}")
        s, v, k = np.unravel_index(bins, layout.shape)
        a, b = transaxial_endpoints(layout)
        q = v * layout.num_tangential + k
        z_mid, dz = layout.sinogram_z_mm()
        p_a = np.column_stack([a[q, 0], a[q, 1], z_mid[s] - dz[s] / 2])
        p_b = np.column_stack([b[q, 0], b[q, 1], z_mid[s] + dz[s] / 2])
        return cls(image, p_a, p_b, weights=weights, **kwargs)

    @property
    def num_lors(self) -> int:
        return self.data_shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return self._w.to(self.dtype)

    def describe(self) -> str:
        return f"{describe(self.kernel, self.device)}; path: {self.path}"

    # --- raw kernels on flattened arrays: (B, nvox) <-> (B, N) ---------------------------------
    def _forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        return _stack([self._forward_one(xb) for xb in x])

    def _adjoint_flat(self, y: torch.Tensor) -> torch.Tensor:
        return _stack([self._adjoint_one(yb) for yb in y])

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "numba":
            from petuq_sirf.operators.kernels import numba_cpu

            numba_cpu.set_num_threads(torch.get_num_threads())
            img = np.ascontiguousarray(x.detach().numpy())
            out = np.empty(self.num_lors, dtype=img.dtype)
            w = self._w.numpy()
            numba_cpu.lor_forward(img, out, self._p_a.numpy(), self._p_b.numpy(), w, *numba_cpu.lor_args(self.image))
            return torch.from_numpy(out)
        if self.kernel == "triton":
            from petuq_sirf.operators.kernels.triton_gpu import lor_project

            out = torch.empty(self.num_lors, dtype=x.dtype, device=x.device)
            lor_project(x.contiguous(), out, self._p_a, self._p_b, self._w, self.image, back=False)
            return out
        out = torch.zeros(self.num_lors, dtype=x.dtype, device=x.device)
        for r, idx, w in self._chunks():
            out[r] = (x[idx] * w.to(x.dtype)).sum(dim=(1, 2))
        return out * self._w.to(x.dtype)

    def _adjoint_one(self, y: torch.Tensor) -> torch.Tensor:
        nvox = self.image.num_voxels
        if self.kernel == "numba":
            from petuq_sirf.operators.kernels import numba_cpu

            numba_cpu.set_num_threads(torch.get_num_threads())
            yn = np.ascontiguousarray(y.detach().numpy())
            acc = np.zeros((numba_cpu.num_threads(), nvox), dtype=yn.dtype)
            w = self._w.numpy()
            numba_cpu.lor_back(yn, acc, self._p_a.numpy(), self._p_b.numpy(), w, *numba_cpu.lor_args(self.image))
            return torch.from_numpy(acc[0] if len(acc) == 1 else acc.sum(axis=0))
        if self.kernel == "triton":
            from petuq_sirf.operators.kernels.triton_gpu import lor_project

            img = torch.zeros(nvox, dtype=y.dtype, device=y.device)
            lor_project(img, y.contiguous(), self._p_a, self._p_b, self._w, self.image, back=True)
            return img
        out = torch.zeros(nvox, dtype=y.dtype, device=y.device)
        yw = y * self._w.to(y.dtype)
        for r, idx, w in self._chunks():
            out.index_add_(0, idx.reshape(-1), (yw[r, None, None] * w.to(y.dtype)).reshape(-1))
        return out

    def _chunks(self):
        """Torch path: ``(rows, index, weight)`` per chunk of LORs of one plane axis (float64 geometry)."""
        d = self._p_b - self._p_a
        x_dom = steps_along_x(d[:, 0], d[:, 1])
        for rows, axis in ((torch.nonzero(x_dom).squeeze(1), 2), (torch.nonzero(~x_dom).squeeze(1), 1)):
            size = max(1, _CHUNK_ELEMENTS // (self.image.shape[axis] * 4))
            for start in range(0, len(rows), size):
                r = rows[start : start + size]
                idx, w = joseph_coefficients(self._p_a[r], self._p_b[r], self.image, axis)
                yield r, idx, w
