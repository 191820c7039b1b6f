"""Triton kernels (CUDA) for the Joseph projector, with the loop structure of the CPU kernels.

Sinograms: one program per (transaxial LOR ``q``, segment ``g``); it walks the planes that touch
the image and, at each plane, works on all the segment's sinograms at once as a vector (the
ring-shift axis: indices ``z0 + stride * j``, contiguous in the ``(y * x, z)`` image). Back projection:
the same loops with atomic adds. LOR lists: one program per block of LORs, a vector over LORs.

On a machine without a GPU the logic runs in Triton's interpreter (``TRITON_INTERPRET=1`` set before
the first call), which is how the tests check it. Kernels are compiled on first use.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from petuq_sirf.operators.kernels.plan import SinogramPlan, steps_along_x


def _kernels():
    """The jitted kernels; built separately for Triton's interpreter (``TRITON_INTERPRET=1``, read by
    ``triton.jit`` when it decorates) and for the GPU, so switching modes in one process never mixes them."""
    return _build_kernels(os.environ.get("TRITON_INTERPRET", "0") == "1")


@functools.cache
def _build_kernels(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def sino_kernel(
        img_ptr, y_ptr, axis_ptr, plo_ptr, phi_ptr, t0_ptr, dt_ptr, fo0_ptr, dfo_ptr, lxy2_ptr, adp_ptr,
        s0_ptr, ns_ptr, dz_ptr, st_ptr, rs_ptr, shift_ptr, scale_ptr,
        Q, nx, ny, nz, vox_ptr, BACK: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        vx = tl.load(vox_ptr)
        vy = tl.load(vox_ptr + 1)
        vz = tl.load(vox_ptr + 2)
        q = tl.program_id(0)
        g = tl.program_id(1)
        lo = tl.load(plo_ptr + q)
        hi = tl.load(phi_ptr + q)
        ax = tl.load(axis_ptr + q)
        s0 = tl.load(s0_ptr + g)
        ns = tl.load(ns_ptr + g)
        dz = tl.load(dz_ptr + g)
        st = tl.load(st_ptr + g)
        rs = tl.load(rs_ptr + g)
        t0 = tl.load(t0_ptr + q)
        dt = tl.load(dt_ptr + q)
        fo0 = tl.load(fo0_ptr + q)
        dfo = tl.load(dfo_ptr + q)
        is_x = ax == 2
        vp = tl.where(is_x, vx, vy)
        n_other = tl.where(is_x, ny, nx)
        step = vp * tl.sqrt(tl.load(lxy2_ptr + q) + dz * dz) / tl.load(adp_ptr + q)
        kz = dt * dz / vz
        cz = t0 * dz / vz
        j = tl.arange(0, BLOCK_S)
        jm = j < ns
        sino = s0 + j
        shift_ref = tl.load(shift_ptr + s0)
        shift = tl.load(shift_ptr + sino, mask=jm, other=0.0)
        # ring shift: the reference sinogram's axial coordinate plus stride * j slices
        rel = tl.where(rs == 1, (st * j).to(tl.float64), shift - shift_ref)
        scale = tl.load(scale_ptr + sino, mask=jm, other=0.0)
        if BACK:
            val = tl.load(y_ptr + sino * Q + q, mask=jm, other=0.0).to(tl.float64) * step * scale
        else:
            acc = tl.zeros((BLOCK_S,), dtype=tl.float64)
        for p in range(lo, hi):
            f = fo0 + p * dfo
            fl = tl.floor(f)
            w1 = f - fl
            w0 = 1.0 - w1
            o = fl.to(tl.int32) + j * 0  # a vector: masks mixing scalars and vectors misbehave in the interpreter
            r0 = tl.where(is_x, o * nx + p, p * nx + o)
            r1 = tl.where(is_x, r0 + nx, r0 + 1)
            ok0 = (o >= 0) & (o < n_other)
            ok1 = (o + 1 >= 0) & (o + 1 < n_other)
            fzr = shift_ref + cz + p * kz
            fz = fzr + rel
            flz = tl.floor(fz)
            wz1 = fz - flz
            wz0 = 1.0 - wz1
            z0 = flz.to(tl.int32)
            okz0 = jm & (z0 >= 0) & (z0 < nz)
            okz1 = jm & (z0 + 1 >= 0) & (z0 + 1 < nz)
            if BACK:
                tl.atomic_add(img_ptr + r0 * nz + z0, (val * w0 * wz0).to(img_ptr.dtype.element_ty), mask=okz0 & ok0)
                tl.atomic_add(
                    img_ptr + r0 * nz + z0 + 1, (val * w0 * wz1).to(img_ptr.dtype.element_ty), mask=okz1 & ok0
                )
                tl.atomic_add(img_ptr + r1 * nz + z0, (val * w1 * wz0).to(img_ptr.dtype.element_ty), mask=okz0 & ok1)
                tl.atomic_add(
                    img_ptr + r1 * nz + z0 + 1, (val * w1 * wz1).to(img_ptr.dtype.element_ty), mask=okz1 & ok1
                )
            else:
                a00 = tl.load(img_ptr + r0 * nz + z0, mask=okz0 & ok0, other=0.0).to(tl.float64)
                a01 = tl.load(img_ptr + r0 * nz + z0 + 1, mask=okz1 & ok0, other=0.0).to(tl.float64)
                a10 = tl.load(img_ptr + r1 * nz + z0, mask=okz0 & ok1, other=0.0).to(tl.float64)
                a11 = tl.load(img_ptr + r1 * nz + z0 + 1, mask=okz1 & ok1, other=0.0).to(tl.float64)
                acc += w0 * (wz0 * a00 + wz1 * a01) + w1 * (wz0 * a10 + wz1 * a11)
        if not BACK:
            tl.store(y_ptr + sino * Q + q, (acc * step * scale).to(y_ptr.dtype.element_ty), mask=jm)

    @triton.jit
    def lor_kernel(
        img_ptr, y_ptr, pa_ptr, pb_ptr, w_ptr, n, nx, ny, nz, geo_ptr,
        AXIS: tl.constexpr, BACK: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        fz_ = tl.load(geo_ptr)
        fy_ = tl.load(geo_ptr + 1)
        fx_ = tl.load(geo_ptr + 2)
        vz = tl.load(geo_ptr + 3)
        vy = tl.load(geo_ptr + 4)
        vx = tl.load(geo_ptr + 5)
        off_z = tl.load(geo_ptr + 6)
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        ax_ = tl.load(pa_ptr + 3 * i, mask=m, other=0.0)
        ay_ = tl.load(pa_ptr + 3 * i + 1, mask=m, other=0.0)
        az_ = tl.load(pa_ptr + 3 * i + 2, mask=m, other=0.0)
        dx = tl.load(pb_ptr + 3 * i, mask=m, other=1.0) - ax_
        dy = tl.load(pb_ptr + 3 * i + 1, mask=m, other=1.0) - ay_
        dzl = tl.load(pb_ptr + 3 * i + 2, mask=m, other=0.0) - az_
        if AXIS == 2:
            dp, do, ap, ao = dx, dy, ax_, ay_
            vp, vo, fp, fo = vx, vy, fx_, fy_
            n_planes, n_other = nx, ny
        else:
            dp, do, ap, ao = dy, dx, ay_, ax_
            vp, vo, fp, fo = vy, vx, fy_, fx_
            n_planes, n_other = ny, nx
        t0 = (fp - ap) / dp
        dt = vp / dp
        fo0 = (ao + t0 * do - fo) / vo
        dfo = dt * do / vo
        fz0 = (az_ + t0 * dzl - fz_) / vz
        dfz = dt * dzl / vz
        step = vp * tl.sqrt(dx * dx + dy * dy + dzl * dzl) / tl.abs(dp)
        w = tl.load(w_ptr + i, mask=m, other=0.0).to(tl.float64)
        if BACK:
            val = tl.load(y_ptr + i, mask=m, other=0.0).to(tl.float64) * w * step
        else:
            acc = tl.zeros((BLOCK,), dtype=tl.float64)
        for p in range(0, n_planes):
            t = t0 + p * dt
            ok = m & (t >= 0.0) & (t <= 1.0)
            f = fo0 + p * dfo
            fl = tl.floor(f)
            w1 = f - fl
            o = fl.to(tl.int32)
            if nz == 1:
                zin = tl.abs(az_ + t * dzl - off_z) <= vz / 2 + 1e-9
                z0 = tl.zeros((BLOCK,), dtype=tl.int32)
                wz1 = tl.zeros((BLOCK,), dtype=tl.float64)
                okz0 = ok & zin
                okz1 = ok & (z0 < 0)
            else:
                fz = fz0 + p * dfz
                flz = tl.floor(fz)
                wz1 = fz - flz
                z0 = flz.to(tl.int32)
                okz0 = ok & (z0 >= 0) & (z0 < nz)
                okz1 = ok & (z0 + 1 >= 0) & (z0 + 1 < nz)
            ok0 = (o >= 0) & (o < n_other)
            ok1 = (o + 1 >= 0) & (o + 1 < n_other)
            if AXIS == 2:
                r0 = o * nx + p
                r1 = r0 + nx
            else:
                r0 = p * nx + o
                r1 = r0 + 1
            nyx = ny * nx
            i00 = z0 * nyx + r0
            i01 = i00 + nyx
            i10 = z0 * nyx + r1
            i11 = i10 + nyx
            c00 = (1.0 - wz1) * (1.0 - w1)
            c01 = wz1 * (1.0 - w1)
            c10 = (1.0 - wz1) * w1
            c11 = wz1 * w1
            if BACK:
                et = img_ptr.dtype.element_ty
                tl.atomic_add(img_ptr + i00, (val * c00).to(et), mask=okz0 & ok0)
                tl.atomic_add(img_ptr + i01, (val * c01).to(et), mask=okz1 & ok0)
                tl.atomic_add(img_ptr + i10, (val * c10).to(et), mask=okz0 & ok1)
                tl.atomic_add(img_ptr + i11, (val * c11).to(et), mask=okz1 & ok1)
            else:
                acc += c00 * tl.load(img_ptr + i00, mask=okz0 & ok0, other=0.0).to(tl.float64)
                acc += c01 * tl.load(img_ptr + i01, mask=okz1 & ok0, other=0.0).to(tl.float64)
                acc += c10 * tl.load(img_ptr + i10, mask=okz0 & ok1, other=0.0).to(tl.float64)
                acc += c11 * tl.load(img_ptr + i11, mask=okz1 & ok1, other=0.0).to(tl.float64)
        if not BACK:
            tl.store(y_ptr + i, (acc * step * w).to(y_ptr.dtype.element_ty), mask=m)

    return sino_kernel, lor_kernel


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


class TritonSinogramKernels:
    """Forward ``(z, y, x) -> (S, Q)`` and back projection of a :class:`SinogramPlan` with Triton."""

    def __init__(self, plan: SinogramPlan, device: torch.device) -> None:
        self.plan = plan
        self.device = device

        def t(a, dtype):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        i32, f64 = torch.int32, torch.float64
        self.tables = (
            t(plan.axis, i32), t(plan.p_lo, i32), t(plan.p_hi, i32), t(plan.t0, f64), t(plan.dt, f64),
            t(plan.fo0, f64), t(plan.dfo, f64), t(plan.lxy2, f64), t(plan.adp, f64),
            t(plan.seg_start, i32), t(plan.seg_count, i32), t(plan.seg_dz, f64), t(plan.seg_stride, i32),
            t(plan.seg_ring_shift, i32), t(plan.shift, f64), t(plan.scale, f64),
        )  # fmt: skip
        self.block_s = max(16, _next_pow2(int(plan.seg_count.max())))

    def _launch(self, img: torch.Tensor, y: torch.Tensor, back: bool) -> None:
        plan = self.plan
        nz, ny, nx = plan.image.shape
        vz, vy, vx = plan.image.voxel_size_mm
        vox = torch.tensor([vx, vy, vz], dtype=torch.float64, device=img.device)
        sino_kernel, _ = _kernels()
        grid = (plan.num_transaxial, len(plan.seg_start))
        sino_kernel[grid](img, y, *self.tables, plan.num_transaxial, nx, ny, nz, vox, BACK=back, BLOCK_S=self.block_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.plan.image.shape
        img_t = x.reshape(nz, ny * nx).T.contiguous()
        out = torch.empty(self.plan.num_sinograms, self.plan.num_transaxial, dtype=x.dtype, device=x.device)
        self._launch(img_t, out, back=False)
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.plan.image.shape
        img_t = torch.zeros(ny * nx, nz, dtype=y.dtype, device=y.device)
        self._launch(img_t, y.contiguous(), back=True)
        return img_t.T.reshape(nz, ny, nx)


def lor_project(
    img: torch.Tensor, out: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor, weight: torch.Tensor, image, back: bool
) -> None:
    """Forward (``out = w * G img``) or back (``img += G^T (w * out)``) for LORs ``pa -> pb`` (float64, mm).

    ``img`` is the flat ``(z * y * x)`` image; the LORs are launched in two groups by plane axis.
    """
    _, lor_kernel = _kernels()
    nz, ny, nx = image.shape
    geo = [image.first_voxel_mm(a) for a in range(3)] + list(image.voxel_size_mm) + [image.offset_mm[0]]
    geo = torch.tensor(geo, dtype=torch.float64, device=img.device)
    d = pb - pa
    x_dom = steps_along_x(d[:, 0], d[:, 1])
    block = 128
    for axis, sel in ((2, x_dom), (1, ~x_dom)):
        rows = torch.nonzero(sel).squeeze(1)
        if len(rows) == 0:
            continue
        pa_s, pb_s, w_s = pa[rows].contiguous(), pb[rows].contiguous(), weight[rows].contiguous()
        y_s = out[rows].contiguous() if back else torch.empty(len(rows), dtype=out.dtype, device=out.device)
        grid = (triton_cdiv(len(rows), block),)
        lor_kernel[grid](
            img, y_s, pa_s, pb_s, w_s, len(rows), nx, ny, nz, geo, AXIS=axis, BACK=back, BLOCK=block,
        )  # fmt: skip
        if not back:
            out[rows] = y_s


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
