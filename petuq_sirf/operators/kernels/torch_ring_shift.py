"""Plain-torch sinogram kernels using the ring-shift symmetry (the fallback of the compiled kernels).

Same decomposition as :mod:`~petuq_sirf.operators.kernels.numba_cpu`, vectorised: for a block of
transaxial LORs the image is interpolated in-plane into ``(lors, planes, z)`` columns; per segment
the axial index/weight of every ``(lor, plane)`` is computed once and shifted to every sinogram of
the segment with one broadcast add, then two gathers along z. The image is padded (one zero row
in-plane, two zero slices at each end axially) and indices are clamped into the padding, so no
validity masks are computed per sample. Back projection is the explicit adjoint (scatter-adds of
the same indices and weights), not autograd through the forward.
"""

from __future__ import annotations

import numpy as np
import torch

from petuq_sirf.operators.kernels.plan import SinogramPlan

_BLOCK_ELEMENTS = 1 << 21
_ZPAD = 2


class TorchSinogramKernels:
    """Forward ``(z, y, x) -> (S, Q)`` and back projection for a :class:`SinogramPlan` on a device."""

    def __init__(self, plan: SinogramPlan, device: torch.device, dtype: torch.dtype) -> None:
        if not plan.ring_shift:
            raise ValueError("the torch ring-shift kernels need a layout with the ring-shift symmetry")
        self.plan = plan
        self.device = device
        self.dtype = dtype
        nz, ny, nx = plan.image.shape
        self.shape = (nz, ny, nx)
        smax = int(max(1, plan.seg_count.max()))
        self.blocks = []
        for ax in (2, 1):
            q_all = np.nonzero(plan.axis == ax)[0]
            q_all = q_all[plan.p_hi[q_all] > plan.p_lo[q_all]]
            if len(q_all) == 0:
                continue
            order = np.lexsort((plan.p_hi[q_all], plan.p_lo[q_all]))
            q_all = q_all[order]
            n_planes = nx if ax == 2 else ny
            q_block = max(1, _BLOCK_ELEMENTS // (n_planes * max(smax, nz + 2 * _ZPAD)))
            for s in range(0, len(q_all), q_block):
                self.blocks.append(self._block(q_all[s : s + q_block], ax))

    def _t(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype or self.dtype, device=self.device)

    def _block(self, q: np.ndarray, ax: int) -> dict:
        """In-plane rows/weights of the block (small: lors x planes), computed once."""
        plan = self.plan
        nz, ny, nx = self.shape
        lo, hi = int(plan.p_lo[q].min()), int(plan.p_hi[q].max())
        p = np.arange(lo, hi)
        f = plan.fo0[q, None] + p[None, :] * plan.dfo[q, None]
        o = np.floor(f)
        w1 = f - o
        o = o.astype(np.int64)
        inside = (p[None, :] >= plan.p_lo[q, None]) & (p[None, :] < plan.p_hi[q, None])
        n_other = ny if ax == 2 else nx
        pad_row = ny * nx
        rows, weights = [], []
        for oi, w in ((o, 1.0 - w1), (o + 1, w1)):
            flat = oi * nx + p[None, :] if ax == 2 else p[None, :] * nx + oi
            ok = (oi >= 0) & (oi < n_other)
            rows.append(self._t(np.where(ok, flat, pad_row), torch.int32))
            weights.append(self._t(np.where(ok & inside, w, 0.0)))
        vp = plan.image.voxel_size_mm[2 if ax == 2 else 1]
        return {
            "q": self._t(q, torch.int64),
            "p": self._t(p, torch.float64),
            "rows": rows,
            "weights": weights,
            "t0": plan.t0[q],
            "dt": plan.dt[q],
            "len2": plan.lxy2[q],
            "adp": plan.adp[q],
            "vp": vp,
        }

    def _axial(self, blk: dict, g: int):
        """Clamped gather indices ``(lors, planes, ns)`` (and +1) and axial weights for segment ``g``."""
        plan = self.plan
        nz = self.shape[0]
        vz = plan.image.voxel_size_mm[0]
        s0, ns, dz = int(plan.seg_start[g]), int(plan.seg_count[g]), float(plan.seg_dz[g])
        kz = torch.as_tensor(blk["dt"] * dz / vz, device=self.device)[:, None]
        cz = torch.as_tensor(blk["t0"] * dz / vz, device=self.device)[:, None]
        p = blk["p"][None, :]
        step = blk["vp"] * np.sqrt(blk["len2"] + dz * dz) / blk["adp"]
        step = torch.as_tensor(step, dtype=self.dtype, device=self.device)
        fz = float(plan.shift[s0]) + cz + p * kz  # (lors, planes), float64
        z0 = torch.floor(fz)
        wz = (fz - z0).to(self.dtype)[..., None]
        j = torch.arange(ns, device=self.device) * int(plan.seg_stride[g])
        idx = z0.to(torch.int64)[..., None] + (j + _ZPAD)
        top = nz + 2 * _ZPAD - 1
        idx0 = idx.clamp_(0, top)
        idx1 = (idx0 + 1).clamp_(max=top)
        return idx0, idx1, wz, step, s0, ns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.shape
        plan = self.plan
        img = torch.zeros(ny * nx + 1, nz + 2 * _ZPAD, dtype=x.dtype, device=x.device)
        img[: ny * nx, _ZPAD : _ZPAD + nz] = x.reshape(nz, ny * nx).T
        out = torch.zeros(plan.num_sinograms, plan.num_transaxial, dtype=x.dtype, device=x.device)
        scale = torch.as_tensor(plan.scale, dtype=x.dtype, device=x.device)
        for blk in self.blocks:
            (r0, r1), (w0, w1) = blk["rows"], blk["weights"]
            cols = img[r0] * w0[..., None] + img[r1] * w1[..., None]  # (lors, planes, z + pads)
            for g in range(len(plan.seg_start)):
                idx0, idx1, wz, step, s0, ns = self._axial(blk, g)
                val = torch.gather(cols, 2, idx0) * (1 - wz) + torch.gather(cols, 2, idx1) * wz
                val = val.sum(1) * step[:, None]  # (lors, ns)
                out[s0 : s0 + ns, blk["q"]] = val.T * scale[s0 : s0 + ns, None]
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.shape
        plan = self.plan
        img = torch.zeros(ny * nx + 1, nz + 2 * _ZPAD, dtype=y.dtype, device=y.device)
        scale = torch.as_tensor(plan.scale, dtype=y.dtype, device=y.device)
        for blk in self.blocks:
            (r0, r1), (w0, w1) = blk["rows"], blk["weights"]
            colg = torch.zeros(*w0.shape, nz + 2 * _ZPAD, dtype=y.dtype, device=y.device)
            for g in range(len(plan.seg_start)):
                idx0, idx1, wz, step, s0, ns = self._axial(blk, g)
                v = (y[s0 : s0 + ns, blk["q"]] * scale[s0 : s0 + ns, None]).T * step[:, None]  # (lors, ns)
                v = v[:, None, :]
                colg.scatter_add_(2, idx0, (v * (1 - wz)).expand_as(idx0))
                colg.scatter_add_(2, idx1, (v * wz).expand_as(idx1))
            img.index_add_(0, r0.reshape(-1), (colg * w0[..., None]).reshape(-1, colg.shape[-1]))
            img.index_add_(0, r1.reshape(-1), (colg * w1[..., None]).reshape(-1, colg.shape[-1]))
        return img[: ny * nx, _ZPAD : _ZPAD + nz].T.reshape(nz, ny, nx)
