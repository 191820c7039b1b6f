"""Compiled CPU kernels (numba, ``parallel=True``) for the Joseph projector.

Sinogram kernels (see :mod:`petuq_sirf.operators.kernels.plan`): a parallel loop over blocks of
transaxial LORs ``q``. For each ``q`` the image is first interpolated in-plane at every plane it
crosses, for all slices at once (a ``(planes, z)`` column, z contiguous); then for each segment the
axial index and weight of every plane are computed once and applied to every sinogram of the
segment by an index shift (ring-shift symmetry): the inner loop runs over the segment's sinograms
with contiguous loads. Only samples that touch the image are visited (plane ranges in-plane,
sinogram ranges axially). Segments without the symmetry use a per-sample axial floor.

The back projection runs the same loops with the reads turned into adds, one pass per stepping
axis; each thread owns a band of planes of that axis, so the threads add into disjoint voxels of
one image (no atomics, no per-thread images; deterministic for a given thread count).
LOR-list kernels (explicit LORs, list mode) project LOR by LOR.

Images are passed as ``(y * x, z)`` arrays (z contiguous) for the sinogram kernels and as flat
``(z * y * x)`` arrays for the LOR-list kernels. JIT-compiled on first use and cached on disk.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from petuq_sirf.operators.kernels.plan import DIAGONAL_TIE_REL

_Q_BLOCK = 16


@njit(cache=True, inline="always")
def _row(axis, o, p, nx):
    return o * nx + p if axis == 2 else p * nx + o


@njit(cache=True, fastmath=True, error_model="numpy")
def _fill_column(img_t, col, axis, lo, hi, fo0, dfo, nx, ny, nz):
    """col[c, 1 + z] = in-plane interpolation of slice z at plane lo + c; pads col[:, 0], col[:, nz + 1] = 0."""
    n_other = ny if axis == 2 else nx
    for p in range(lo, hi):
        c = p - lo
        f = fo0 + p * dfo
        fl = math.floor(f)
        w1 = f - fl
        w0 = 1.0 - w1
        o = int(fl)
        dst = col[c]
        dst[0] = 0.0
        dst[nz + 1] = 0.0
        ok0 = 0 <= o < n_other
        ok1 = 0 <= o + 1 < n_other
        a = img_t[_row(axis, o, p, nx)] if ok0 else img_t[0]
        b = img_t[_row(axis, o + 1, p, nx)] if ok1 else img_t[0]
        if ok0 and ok1:
            for z in range(nz):
                dst[z + 1] = w0 * a[z] + w1 * b[z]
        elif ok0:
            for z in range(nz):
                dst[z + 1] = w0 * a[z]
        elif ok1:
            for z in range(nz):
                dst[z + 1] = w1 * b[z]
        else:
            for z in range(nz):
                dst[z + 1] = 0.0


@njit(cache=True, fastmath=True, error_model="numpy")
def _scatter_column(img_t, col, axis, lo, hi, fo0, dfo, nx, ny, nz):
    """Adjoint of :func:`_fill_column`: img_t[row, z] += w * col[c, 1 + z]."""
    n_other = ny if axis == 2 else nx
    for p in range(lo, hi):
        c = p - lo
        f = fo0 + p * dfo
        fl = math.floor(f)
        w1 = f - fl
        w0 = 1.0 - w1
        o = int(fl)
        src = col[c, 1 : nz + 1]
        if 0 <= o < n_other:
            a = img_t[_row(axis, o, p, nx)]
            for z in range(nz):
                a[z] += w0 * src[z]
        if 0 <= o + 1 < n_other:
            b = img_t[_row(axis, o + 1, p, nx)]
            for z in range(nz):
                b[z] += w1 * src[z]


@njit(cache=True, inline="always")
def _j_range(z0, stride, ns, nz):
    """Sinograms j (offset stride * j) whose pair (z0 + stride j, +1) touches slices 0..nz-1."""
    jlo = -((z0 + 1) // stride)  # ceil((-1 - z0) / stride)
    jhi = (nz - 1 - z0) // stride
    if jlo < 0:
        jlo = 0
    if jhi > ns - 1:
        jhi = ns - 1
    return jlo, jhi + 1


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def sinogram_forward(
    img_t, out, n_threads, axis, p_lo, p_hi, t0, dt, fo0, dfo, lxy2, adp,
    seg_start, seg_count, seg_dz, seg_stride, seg_rs, shift, scale, nx, ny, nz, vx, vy, vz,
):  # fmt: skip
    """out[s, q] = Joseph line integral of sinogram s, transaxial LOR q (img_t: (y*x, z)), on ``n_threads`` threads."""
    Q = axis.shape[0]
    G = seg_start.shape[0]
    P = max(nx, ny)
    smax = 1
    for g in range(G):
        smax = max(smax, seg_count[g])
    nblocks = (Q + _Q_BLOCK - 1) // _Q_BLOCK
    for th in prange(n_threads):  # blocks dealt round-robin: balanced whatever the work per view
        col = np.empty((P, nz + 2), dtype=img_t.dtype)
        acc = np.empty(smax, dtype=img_t.dtype)
        wb = np.empty(2, dtype=img_t.dtype)  # weights in the image's float type (no conversions inside)
        for b in range(th, nblocks, n_threads):
            for q in range(b * _Q_BLOCK, min(Q, (b + 1) * _Q_BLOCK)):
                lo = p_lo[q]
                hi = p_hi[q]
                if hi <= lo:
                    for s in range(out.shape[0]):
                        out[s, q] = 0.0
                    continue
                ax = axis[q]
                _fill_column(img_t, col, ax, lo, hi, fo0[q], dfo[q], nx, ny, nz)
                vp = vx if ax == 2 else vy
                for g in range(G):
                    s0 = seg_start[g]
                    ns = seg_count[g]
                    dz = seg_dz[g]
                    step = vp * math.sqrt(lxy2[q] + dz * dz) / adp[q]
                    kz = dt[q] * dz / vz
                    cz = t0[q] * dz / vz
                    if seg_rs[g] == 1:
                        st = seg_stride[g]
                        base = shift[s0] + cz
                        for j in range(ns):
                            acc[j] = 0.0
                        for p in range(lo, hi):
                            fz = base + p * kz
                            fl = math.floor(fz)
                            w1 = fz - fl
                            w0 = 1.0 - w1
                            z0 = int(fl)
                            jlo, jhi = _j_range(z0, st, ns, nz)
                            n = jhi - jlo
                            if n <= 0:
                                continue
                            if n < 8:  # few sinograms (2D, short segments): plain indexing, no view set-up
                                for j in range(jlo, jhi):
                                    i = z0 + 1 + st * j
                                    acc[j] += w0 * col[p - lo, i] + w1 * col[p - lo, i + 1]
                                continue
                            # slices: loop indices from 0 let numba drop the negative-index checks (vectorises)
                            i0 = z0 + 1 + st * jlo
                            a = acc[jlo:jhi]
                            wb[0] = w0
                            wb[1] = w1
                            u0 = wb[0]
                            u1 = wb[1]
                            if st == 1:  # contiguous (span > 1)
                                c0 = col[p - lo, i0 : i0 + n]
                                c1 = col[p - lo, i0 + 1 : i0 + 1 + n]
                                for j in range(n):
                                    a[j] += u0 * c0[j] + u1 * c1[j]
                            else:
                                d0 = col[p - lo, i0 : i0 + st * n : st]
                                d1 = col[p - lo, i0 + 1 : i0 + 1 + st * n : st]
                                for j in range(n):
                                    a[j] += u0 * d0[j] + u1 * d1[j]
                        for j in range(ns):
                            out[s0 + j, q] = acc[j] * step * scale[s0 + j]
                    else:
                        for j in range(ns):
                            sh = shift[s0 + j] + cz
                            tot = 0.0
                            for p in range(lo, hi):
                                fz = sh + p * kz
                                fl = math.floor(fz)
                                z0 = int(fl)
                                if -1 <= z0 <= nz - 1:
                                    w1 = fz - fl
                                    tot += (1.0 - w1) * col[p - lo, z0 + 1] + w1 * col[p - lo, z0 + 2]
                            out[s0 + j, q] = tot * step * scale[s0 + j]


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def sinogram_back(
    y, img_t, ax_phase, n_threads, axis, p_lo, p_hi, t0, dt, fo0, dfo, lxy2, adp,
    seg_start, seg_count, seg_dz, seg_stride, seg_rs, shift, scale, nx, ny, nz, vx, vy, vz,
):  # fmt: skip
    """img_t += back projection of the LORs of y (S, Q) stepping along image axis ``ax_phase`` (2: x, 1: y).

    Call once per axis. Thread ``th`` handles the ``th``-th band of planes (x columns for
    ``ax_phase = 2``, y rows for 1) of every such LOR, so the threads write disjoint voxels of the
    one shared image: no per-thread images, no reduction, half the cache footprint per thread.
    """
    Q = axis.shape[0]
    G = seg_start.shape[0]
    P = max(nx, ny)
    n_planes = nx if ax_phase == 2 else ny
    smax = 1
    for g in range(G):
        smax = max(smax, seg_count[g])
    for th in prange(n_threads):
        band_lo = (n_planes * th) // n_threads
        band_hi = (n_planes * (th + 1)) // n_threads
        col = np.empty((P, nz + 2), dtype=img_t.dtype)
        v = np.empty(smax, dtype=img_t.dtype)
        wb = np.empty(2, dtype=img_t.dtype)
        for q in range(Q):
            ax = axis[q]
            if ax != ax_phase:
                continue
            lo = max(p_lo[q], band_lo)
            hi = min(p_hi[q], band_hi)
            if hi <= lo:
                continue
            for c in range(hi - lo):
                for z in range(nz + 2):
                    col[c, z] = 0.0
            vp = vx if ax == 2 else vy
            for g in range(G):
                s0 = seg_start[g]
                ns = seg_count[g]
                dz = seg_dz[g]
                step = vp * math.sqrt(lxy2[q] + dz * dz) / adp[q]
                kz = dt[q] * dz / vz
                cz = t0[q] * dz / vz
                nonzero = False
                for j in range(ns):
                    v[j] = y[s0 + j, q] * step * scale[s0 + j]
                    nonzero |= v[j] != 0.0
                if not nonzero:
                    continue
                if seg_rs[g] == 1:
                    st = seg_stride[g]
                    base = shift[s0] + cz
                    for p in range(lo, hi):
                        fz = base + p * kz
                        fl = math.floor(fz)
                        w1 = fz - fl
                        w0 = 1.0 - w1
                        z0 = int(fl)
                        jlo, jhi = _j_range(z0, st, ns, nz)
                        n = jhi - jlo
                        if n <= 0:
                            continue
                        if n < 8:
                            for j in range(jlo, jhi):
                                i = z0 + 1 + st * j
                                col[p - lo, i] += w0 * v[j]
                                col[p - lo, i + 1] += w1 * v[j]
                            continue
                        i0 = z0 + 1 + st * jlo
                        vv = v[jlo:jhi]
                        wb[0] = w0
                        wb[1] = w1
                        u0 = wb[0]
                        u1 = wb[1]
                        if st == 1:  # one pass: col[i0 + m] += u0 v[m] + u1 v[m - 1]
                            row = col[p - lo]
                            row[i0] += u0 * vv[0]
                            row[i0 + n] += u1 * vv[n - 1]
                            cc = row[i0 + 1 : i0 + n]
                            va = vv[1:n]
                            vb = vv[0 : n - 1]
                            for m in range(n - 1):
                                cc[m] += u0 * va[m] + u1 * vb[m]
                        else:
                            d0 = col[p - lo, i0 : i0 + st * n : st]
                            for j in range(n):
                                d0[j] += u0 * vv[j]
                            d1 = col[p - lo, i0 + 1 : i0 + 1 + st * n : st]
                            for j in range(n):
                                d1[j] += u1 * vv[j]
                else:
                    for j in range(ns):
                        sh = shift[s0 + j] + cz
                        for p in range(lo, hi):
                            fz = sh + p * kz
                            fl = math.floor(fz)
                            z0 = int(fl)
                            if -1 <= z0 <= nz - 1:
                                w1 = fz - fl
                                col[p - lo, z0 + 1] += (1.0 - w1) * v[j]
                                col[p - lo, z0 + 2] += w1 * v[j]
            _scatter_column(img_t, col, ax, lo, hi, fo0[q], dfo[q], nx, ny, nz)


@njit(cache=True)
def _lor_setup(pa, pb, nx, ny, nz, first, vox, off_z):
    """Plane axis and linear coefficients of one LOR; see the LOR-list kernels."""
    dx = pb[0] - pa[0]
    dy = pb[1] - pa[1]
    dzl = pb[2] - pa[2]
    if abs(dx) >= abs(dy) * (1.0 - DIAGONAL_TIE_REL):  # diagonal ties to x, as plan.steps_along_x
        ax, cp, co, n_planes, vp, vo, fp, fo = 2, 0, 1, nx, vox[2], vox[1], first[2], first[1]
        dp, do = dx, dy
    else:
        ax, cp, co, n_planes, vp, vo, fp, fo = 1, 1, 0, ny, vox[1], vox[2], first[1], first[2]
        dp, do = dy, dx
    t0 = (fp - pa[cp]) / dp
    dt = vp / dp
    fo0 = (pa[co] + t0 * do - fo) / vo
    dfo = dt * do / vo
    fz0 = (pa[2] + t0 * dzl - first[0]) / vox[0]
    dfz = dt * dzl / vox[0]
    step = vp * math.sqrt(dx * dx + dy * dy + dzl * dzl) / abs(dp)
    # planes with 0 <= t <= 1 (widened by one, checked per sample)
    ta = -t0 / dt
    tb = (1.0 - t0) / dt
    lo = int(math.floor(min(ta, tb))) - 1
    hi = int(math.ceil(max(ta, tb))) + 2
    lo = max(lo, 0)
    hi = min(hi, n_planes)
    return ax, lo, hi, t0, dt, fo0, dfo, fz0, dfz, step, pa[2], dzl


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def lor_forward(img, out, pa, pb, weight, nx, ny, nz, first, vox, off_z):
    """out[i] = weight[i] * Joseph line integral of LOR pa[i] -> pb[i] (mm) through img (flat z*y*x)."""
    n = pa.shape[0]
    nynx = ny * nx
    for i in prange(n):
        ax, lo, hi, t0, dt, fo0, dfo, fz0, dfz, step, za, dzl = _lor_setup(pa[i], pb[i], nx, ny, nz, first, vox, off_z)
        n_other = ny if ax == 2 else nx
        tot = 0.0
        for p in range(lo, hi):
            t = t0 + p * dt
            if t < 0.0 or t > 1.0:
                continue
            f = fo0 + p * dfo
            fl = math.floor(f)
            o = int(fl)
            if o < -1 or o > n_other - 1:
                continue
            w1 = f - fl
            if nz == 1:
                if abs(za + t * dzl - off_z) > vox[0] / 2 + 1e-9:
                    continue
                z0 = 0
                wz1 = 0.0
            else:
                fz = fz0 + p * dfz
                flz = math.floor(fz)
                z0 = int(flz)
                if z0 < -1 or z0 > nz - 1:
                    continue
                wz1 = fz - flz
            for dzi in range(2):
                zi = z0 + dzi
                wz = wz1 if dzi == 1 else 1.0 - wz1
                if zi < 0 or zi >= nz or wz == 0.0:
                    continue
                for doi in range(2):
                    oi = o + doi
                    if oi < 0 or oi >= n_other:
                        continue
                    wo = w1 if doi == 1 else 1.0 - w1
                    tot += wz * wo * img[zi * nynx + _row(ax, oi, p, nx)]
        out[i] = tot * step * weight[i]


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def lor_back(y, img_acc, pa, pb, weight, nx, ny, nz, first, vox, off_z):
    """img_acc[thread] += back projection of the LOR values y (times weight); caller sums over threads."""
    n = pa.shape[0]
    nynx = ny * nx
    n_threads = img_acc.shape[0]
    for th in prange(n_threads):
        img = img_acc[th]
        for i in range(th, n, n_threads):
            val = y[i] * weight[i]
            if val == 0.0:
                continue
            ax, lo, hi, t0, dt, fo0, dfo, fz0, dfz, step, za, dzl = _lor_setup(
                pa[i], pb[i], nx, ny, nz, first, vox, off_z
            )
            val *= step
            n_other = ny if ax == 2 else nx
            for p in range(lo, hi):
                t = t0 + p * dt
                if t < 0.0 or t > 1.0:
                    continue
                f = fo0 + p * dfo
                fl = math.floor(f)
                o = int(fl)
                if o < -1 or o > n_other - 1:
                    continue
                w1 = f - fl
                if nz == 1:
                    if abs(za + t * dzl - off_z) > vox[0] / 2 + 1e-9:
                        continue
                    z0 = 0
                    wz1 = 0.0
                else:
                    fz = fz0 + p * dfz
                    flz = math.floor(fz)
                    z0 = int(flz)
                    if z0 < -1 or z0 > nz - 1:
                        continue
                    wz1 = fz - flz
                for dzi in range(2):
                    zi = z0 + dzi
                    wz = wz1 if dzi == 1 else 1.0 - wz1
                    if zi < 0 or zi >= nz or wz == 0.0:
                        continue
                    for doi in range(2):
                        oi = o + doi
                        if oi < 0 or oi >= n_other:
                            continue
                        wo = w1 if doi == 1 else 1.0 - w1
                        img[zi * nynx + _row(ax, oi, p, nx)] += wz * wo * val


@njit(parallel=True, cache=True)
def transpose_into(img_t, out):
    """``out[z, v] = img_t[v, z]``: the kernels' ``(y * x, z)`` image into ``(z, y * x)``, in parallel."""
    nv, nz = img_t.shape
    n_blocks = (nv + 63) // 64
    for blk in prange(n_blocks):
        v0 = blk * 64
        v1 = min(nv, v0 + 64)
        for v in range(v0, v1):
            for z in range(nz):
                out[z, v] = img_t[v, z]


def num_threads() -> int:
    """Threads numba's parallel loops use now."""
    return int(numba.get_num_threads())


def set_num_threads(n: int) -> None:
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def plan_args(plan) -> tuple:
    """The plan's tables in the kernels' argument order (after the image/data arrays)."""
    im = plan.image
    nz, ny, nx = im.shape
    vz, vy, vx = im.voxel_size_mm
    return (
        plan.axis, plan.p_lo, plan.p_hi, plan.t0, plan.dt, plan.fo0, plan.dfo, plan.lxy2, plan.adp,
        plan.seg_start, plan.seg_count, plan.seg_dz, plan.seg_stride, plan.seg_ring_shift, plan.shift, plan.scale,
        nx, ny, nz, vx, vy, vz,
    )  # fmt: skip


def lor_args(image) -> tuple:
    nz, ny, nx = image.shape
    first = np.array([image.first_voxel_mm(a) for a in range(3)], dtype=np.float64)
    vox = np.array(image.voxel_size_mm, dtype=np.float64)
    return nx, ny, nz, first, vox, float(image.offset_mm[0])
