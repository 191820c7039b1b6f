"""Geometry tables shared by the projector kernels (torch, numba, Triton).

Every LOR of a :class:`~petuq_sirf.scanner.layout.SinogramLayout` is a transaxial LOR ``q``
(view, tangential bin), shared by all sinograms, with the axial end points of its sinogram. The
Joseph samples of transaxial LOR ``q`` lie on the image planes ``p`` perpendicular to its dominant
in-plane axis, at parameter ``t_p = t0 + p dt`` along the LOR. Everything the kernels need is then
linear in ``p``:

* in-plane (fractional voxel) coordinate ``f_o(p) = fo0 + p dfo`` (the other in-plane axis);
* axial coordinate of sinogram ``s`` in segment ``g``: ``f_z(s, p) = shift_s + (t0 + p dt) dz_g / vz``.

Ring-shift symmetry: within a segment, consecutive sinograms are the same LOR moved by a whole
number of image slices (``shift_s - shift_ref`` an integer, ``stride * j`` for the ``j``-th
sinogram), so the axial index and weight of a sample depend on ``(segment, q, p)`` only and
every sinogram of the segment reuses them by an index shift. :attr:`SinogramPlan.ring_shift`
says whether this holds for the layout/image pair (it does for STIR's default images).

The plane range ``[p_lo, p_hi)`` of each transaxial LOR covers only the planes where the
sample touches the image in-plane (``-1 <= floor(f_o) <= n_other - 1``) and ``0 <= t <= 1``:
samples outside the image are never visited. Tables are ``Q``-sized (no per-LOR end points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

_SLAB_TOL_MM = 1e-9
_SHIFT_TOL = 1e-6
DIAGONAL_TIE_REL = 1e-6


def steps_along_x(dx, dy):
    """Whether LORs with transaxial direction ``(dx, dy)`` step through x planes (numpy or torch arrays).

    Joseph sampling steps along the dominant in-plane axis, ``|dx| >= |dy|``. Exactly diagonal LORs
    (every view at 45 degrees) are ties, and float32 and float64 end points (or two formulas for
    them) round a tie either way, which changes that LOR's samples by a few per cent. Ties within
    a relative ``1e-6`` therefore always go to x, so every path and precision samples the same planes.
    """
    return abs(dx) >= abs(dy) * (1.0 - DIAGONAL_TIE_REL)


@dataclass
class SinogramPlan:
    """Per transaxial LOR, per segment and per sinogram tables (numpy, float64 / int32).

    Attributes (``Q`` transaxial LORs, ``G`` segments, ``S`` sinograms):
        axis: image axis stepped through, 2 (x planes) or 1 (y planes), shape ``(Q,)`` int32.
        p_lo, p_hi: plane range touching the image, shape ``(Q,)`` int32.
        t0, dt, fo0, dfo: linear coefficients (see module docstring), shape ``(Q,)``.
        lxy2: squared transaxial LOR length (mm^2); adp: ``|d_p|`` (mm), shape ``(Q,)``.
        seg_start, seg_count: first sinogram and number of sinograms of each segment, ``(G,)`` int32.
        seg_dz: axial extent ``z_b - z_a`` of the segment's LORs (mm), ``(G,)``.
        seg_stride: slices between consecutive sinograms of the segment (ring shift), ``(G,)`` int32.
        seg_ring_shift: 1 where the segment's sinograms are exact ring shifts of its first, ``(G,)`` int32.
        shift: ``(z_a(s) - first voxel z) / vz`` of each sinogram, ``(S,)``.
        scale: per-sinogram factor (1; 0/1 slab membership for a single-slice image), ``(S,)``.
        ring_shift: whether every segment's shifts are ``shift_ref + stride * j`` exactly.
    """

    image: ImageGeometry
    axis: np.ndarray
    p_lo: np.ndarray
    p_hi: np.ndarray
    t0: np.ndarray
    dt: np.ndarray
    fo0: np.ndarray
    dfo: np.ndarray
    lxy2: np.ndarray
    adp: np.ndarray
    seg_start: np.ndarray
    seg_count: np.ndarray
    seg_dz: np.ndarray
    seg_stride: np.ndarray
    seg_ring_shift: np.ndarray
    shift: np.ndarray
    scale: np.ndarray
    ring_shift: bool

    @property
    def num_transaxial(self) -> int:
        return len(self.axis)

    @property
    def num_sinograms(self) -> int:
        return len(self.shift)

    @property
    def num_samples(self) -> int:
        """Transaxial samples ``sum_q (p_hi - p_lo)`` times the sinograms (an upper bound on the work)."""
        return int((self.p_hi - self.p_lo).astype(np.int64).sum()) * self.num_sinograms


def transaxial_endpoints(layout: SinogramLayout, views: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Transaxial end points ``(a, b)`` in mm (x, y) of every (view, tangential) LOR, shape ``(V * T, 2)``.

    The same formula as :meth:`SinogramLayout.lor_endpoints` without the per-sinogram copies.
    """
    phi = layout.view_angles_rad()
    if views is not None:
        phi = phi[np.asarray(views)]
    beta = layout._tangential_angles()
    theta_a = (phi[:, None] - np.pi / 2 + beta[None, :]).reshape(-1)
    theta_b = (phi[:, None] + np.pi / 2 - beta[None, :]).reshape(-1)
    r = layout.scanner.effective_radius_mm
    a = np.stack([r * np.cos(theta_a), r * np.sin(theta_a)], axis=1)
    b = np.stack([r * np.cos(theta_b), r * np.sin(theta_b)], axis=1)
    return a, b


def _transaxial_tables(a: np.ndarray, b: np.ndarray, image: ImageGeometry) -> dict[str, np.ndarray]:
    _, ny, nx = image.shape
    d = b - a
    x_dom = steps_along_x(d[:, 0], d[:, 1])
    axis = np.where(x_dom, 2, 1).astype(np.int32)
    cp = np.where(x_dom, 0, 1)  # end point column of the plane axis
    co = 1 - cp
    rows = np.arange(len(a))
    vp = np.where(x_dom, image.voxel_size_mm[2], image.voxel_size_mm[1])
    vo = np.where(x_dom, image.voxel_size_mm[1], image.voxel_size_mm[2])
    first_p = np.where(x_dom, image.first_voxel_mm(2), image.first_voxel_mm(1))
    first_o = np.where(x_dom, image.first_voxel_mm(1), image.first_voxel_mm(2))
    n_planes = np.where(x_dom, nx, ny)
    n_other = np.where(x_dom, ny, nx)
    dp = d[rows, cp]
    t0 = (first_p - a[rows, cp]) / dp
    dt = vp / dp
    fo0 = (a[rows, co] + t0 * d[rows, co] - first_o) / vo
    dfo = dt * d[rows, co] / vo
    # plane range: evaluate the validity with the kernels' own formulas, in blocks of LORs
    p_lo = np.zeros(len(a), dtype=np.int32)
    p_hi = np.zeros(len(a), dtype=np.int32)
    P = int(max(nx, ny))
    p = np.arange(P)
    block = max(1, (1 << 20) // P)  # bounded temporaries: ~8 MB per (block, P) float64 array
    for s in range(0, len(a), block):
        sl = slice(s, s + block)
        t = t0[sl, None] + p[None, :] * dt[sl, None]
        o = np.floor(fo0[sl, None] + p[None, :] * dfo[sl, None])
        ok = (t >= 0) & (t <= 1) & (o >= -1) & (o <= n_other[sl, None] - 1) & (p[None, :] < n_planes[sl, None])
        anyok = ok.any(axis=1)
        first = np.argmax(ok, axis=1)
        last = P - np.argmax(ok[:, ::-1], axis=1)
        p_lo[sl] = np.where(anyok, first, 0)
        p_hi[sl] = np.where(anyok, last, 0)
    return {
        "axis": axis,
        "p_lo": p_lo,
        "p_hi": p_hi,
        "t0": t0,
        "dt": dt,
        "fo0": fo0,
        "dfo": dfo,
        "lxy2": (d**2).sum(axis=1),
        "adp": np.abs(dp),
    }


def sinogram_plan(layout: SinogramLayout, image: ImageGeometry, views: np.ndarray | None = None) -> SinogramPlan | None:
    """Kernel tables for ``layout`` (optionally a subset of views) on ``image``.

    Returns ``None`` when the compiled kernels cannot represent the pair: a single-slice image
    with oblique LORs (those go through the general LOR-list path).
    """
    a, b = transaxial_endpoints(layout, views)
    tables = _transaxial_tables(a, b, image)
    z_mid, dz = layout.sinogram_z_mm()
    z_a = z_mid - dz / 2
    seg_of = layout._sinogram_table["sino_segment"]
    counts = np.bincount(seg_of, minlength=len(layout.segments))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    seg_dz = np.array([dz[s] if c else 0.0 for s, c in zip(starts, counts)])
    nz = image.shape[0]
    vz = image.voxel_size_mm[0]
    if nz == 1:
        if np.any(np.abs(dz) > 0):
            return None
        shift = np.zeros(len(z_a))
        scale = (np.abs(z_a - image.offset_mm[0]) <= vz / 2 + _SLAB_TOL_MM).astype(np.float64)
    else:
        shift = (z_a - image.first_voxel_mm(0)) / vz
        scale = np.ones(len(z_a))
    strides = np.ones(len(counts), dtype=np.int32)
    seg_ring_shift = np.ones(len(counts), dtype=np.int32)
    for g, (s0, c) in enumerate(zip(starts, counts)):
        if c < 2:
            continue
        rel = shift[s0 : s0 + c] - shift[s0]
        stride = int(round(rel[1]))
        ok = stride >= 1 and np.allclose(rel, stride * np.arange(c), rtol=0, atol=_SHIFT_TOL)
        if ok:
            strides[g] = stride
        else:
            seg_ring_shift[g] = 0
    return SinogramPlan(
        image=image,
        seg_start=starts.astype(np.int32),
        seg_count=counts.astype(np.int32),
        seg_dz=seg_dz,
        seg_stride=strides,
        seg_ring_shift=seg_ring_shift,
        shift=shift,
        scale=scale,
        ring_shift=bool(seg_ring_shift.all()),
        **tables,
    )
