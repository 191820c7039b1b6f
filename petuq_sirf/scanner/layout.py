"""Sinogram layout: segments (span, maximum ring difference), views (mashing), tangential bins.

Array order is SIRF/STIR's: projection data ``(sinograms, views, tangential)`` with the
segments stored one after another in ascending ring difference (as STIR Interfile lists
them), and within a segment sinograms in increasing axial position.

Geometry conventions (non-arc-corrected data, as STIR):
  * raw view ``u`` has angle ``phi_u = u * dtheta + tilt`` with ``dtheta = 2 pi / N``;
    a mashed view has the mean angle of the raw views it merges;
  * tangential bin ``k`` (centred, ``-n/2 .. n/2 - 1``) lies at ``s = R sin(k pi / N)``
    (``N`` detectors per ring, ``R`` the ring radius at the average depth of interaction): the
    bins of a non-arc-corrected sinogram are detector pairs, half a crystal angle apart, as in
    STIR's ``ProjDataInfoCylindricalNoArcCorr`` (angular increment ``pi / N``). The scanner's
    ``default_bin_size_mm`` (about ``R pi / N``) is the arc-corrected bin size; it does not set
    the sampling (on a scanner where it differs from ``R pi / N``, e.g. ``test-3d`` by 2.3 %, the
    old ``k b / R`` put the bins where neither STIR nor our crystal-pair binning has them);
  * the LOR is ``x cos(phi) + y sin(phi) = s`` and joins the ring points at angles
    ``theta_a = phi - pi/2 + k pi/N`` (ring ``r_a``, lower z for a positive ring difference
    ``r_b - r_a``) and ``theta_b = phi + pi/2 - k pi/N``, as STIR's ``get_LOR`` parametrises it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from petuq_sirf.scanner.geometry import ScannerGeometry


@dataclass(frozen=True)
class Segment:
    """Ring-difference range ``[min_ring_difference, max_ring_difference]`` merged into one segment."""

    min_ring_difference: int
    max_ring_difference: int

    @property
    def average_ring_difference(self) -> float:
        return 0.5 * (self.min_ring_difference + self.max_ring_difference)


def make_segments(span: int, max_ring_difference: int) -> list[Segment]:
    """Segments for STIR's ``span`` compression, ascending in ring difference."""
    if span < 1 or span % 2 == 0:
        raise ValueError(f"span must be a positive odd number, got {span}")
    if max_ring_difference < 0:
        raise ValueError(f"max_ring_difference must be >= 0, got {max_ring_difference}")
    if span == 1:
        return [Segment(d, d) for d in range(-max_ring_difference, max_ring_difference + 1)]
    half = (span - 1) // 2
    positive = [Segment(-min(half, max_ring_difference), min(half, max_ring_difference))]
    lo = half + 1
    while lo <= max_ring_difference:
        hi = min(lo + span - 1, max_ring_difference)
        positive.append(Segment(lo, hi))
        lo = hi + 1
    negative = [Segment(-s.max_ring_difference, -s.min_ring_difference) for s in positive[:0:-1]]
    return negative + positive


@dataclass(frozen=True)
class SinogramLayout:
    """How LORs of ``scanner`` are binned into a 3D sinogram ``(sinograms, views, tangential)``.

    Args:
        scanner: the scanner geometry.
        span: axial compression (odd; 1 = no compression).
        max_ring_difference: largest ring difference kept (default: all, ``num_rings - 1``).
        view_mashing: number of raw views added into one view.
        num_tangential_bins: tangential bins kept (default: the scanner's default).
    """

    scanner: ScannerGeometry
    span: int = 1
    max_ring_difference: int | None = None
    view_mashing: int = 1
    num_tangential_bins: int | None = None

    def __post_init__(self) -> None:
        rmax = self.scanner.num_rings - 1
        if self.max_ring_difference is not None and not 0 <= self.max_ring_difference <= rmax:
            raise ValueError(
                f"max_ring_difference {self.max_ring_difference} outside 0..{rmax} for {self.scanner.name}"
            )
        if self.view_mashing < 1 or self.scanner.num_views % self.view_mashing:
            raise ValueError(f"view_mashing {self.view_mashing} must divide the {self.scanner.num_views} raw views")
        n = self.num_tangential_bins
        max_bins = self.scanner.detectors_per_ring
        if n is not None and not 1 <= n <= max_bins:
            raise ValueError(f"num_tangential_bins {n} outside 1..{max_bins} for {self.scanner.name}")
        sc = self.scanner
        if (self.num_tangential // 2) * self.angular_increment_rad >= math.pi / 2:
            raise ValueError(f"{self.num_tangential} tangential bins exceed the {sc.detectors_per_ring}-detector ring")

    # --- sizes -----------------------------------------------------------------------
    @property
    def max_rd(self) -> int:
        return self.scanner.num_rings - 1 if self.max_ring_difference is None else self.max_ring_difference

    @property
    def num_views(self) -> int:
        return self.scanner.num_views // self.view_mashing

    @property
    def num_tangential(self) -> int:
        return self.scanner.num_tangential_bins if self.num_tangential_bins is None else self.num_tangential_bins

    @cached_property
    def segments(self) -> list[Segment]:
        return make_segments(self.span, self.max_rd)

    @cached_property
    def _sinogram_table(self) -> dict[str, np.ndarray]:
        """Per sinogram: segment index and ring sum; per ring pair: sinogram, ring_a, ring_b."""
        R = self.scanner.num_rings
        sino_segment, sino_ringsum = [], []
        pair_sino, pair_a, pair_b = [], [], []
        for seg_index, seg in enumerate(self.segments):
            by_sum: dict[int, list[tuple[int, int]]] = {}
            for d in range(seg.min_ring_difference, seg.max_ring_difference + 1):
                for ra in range(max(0, -d), min(R, R - d)):
                    by_sum.setdefault(2 * ra + d, []).append((ra, ra + d))
            for ring_sum in sorted(by_sum):
                sino = len(sino_segment)
                sino_segment.append(seg_index)
                sino_ringsum.append(ring_sum)
                for ra, rb in by_sum[ring_sum]:
                    pair_sino.append(sino)
                    pair_a.append(ra)
                    pair_b.append(rb)
        return {
            "sino_segment": np.asarray(sino_segment, dtype=np.int64),
            "sino_ringsum": np.asarray(sino_ringsum, dtype=np.int64),
            "pair_sino": np.asarray(pair_sino, dtype=np.int64),
            "pair_ring_a": np.asarray(pair_a, dtype=np.int64),
            "pair_ring_b": np.asarray(pair_b, dtype=np.int64),
        }

    @property
    def num_sinograms(self) -> int:
        return len(self._sinogram_table["sino_segment"])

    @property
    def sinograms_per_segment(self) -> list[int]:
        counts = np.bincount(self._sinogram_table["sino_segment"], minlength=len(self.segments))
        return counts.tolist()

    @property
    def shape(self) -> tuple[int, int, int]:
        """Projection data shape ``(sinograms, views, tangential)``."""
        return (self.num_sinograms, self.num_views, self.num_tangential)

    @property
    def num_bins(self) -> int:
        s, v, t = self.shape
        return s * v * t

    def ring_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All ring pairs ``(sinogram index, ring_a, ring_b)`` binned into this layout, each shape ``(P,)``."""
        t = self._sinogram_table
        return t["pair_sino"], t["pair_ring_a"], t["pair_ring_b"]

    # --- geometry --------------------------------------------------------------------
    def tangential_indices(self) -> np.ndarray:
        """Centred tangential bin numbers ``-n//2 .. n - n//2 - 1``, shape ``(tangential,)``."""
        n = self.num_tangential
        return np.arange(n) - n // 2

    def raw_view_angles_rad(self) -> np.ndarray:
        """Angles of the raw (unmashed) views, shape ``(view_mashing, views)``."""
        u = np.arange(self.scanner.num_views).reshape(self.num_views, self.view_mashing).T
        return u * self.scanner.crystal_angle_rad + math.radians(self.scanner.intrinsic_tilt_deg)

    def view_angles_rad(self) -> np.ndarray:
        """Angle ``phi`` of each (mashed) view in radians, shape ``(views,)``."""
        return self.raw_view_angles_rad().mean(axis=0)

    def tangential_positions_mm(self) -> np.ndarray:
        """Signed distance ``s`` of each tangential bin from the axis (mm), shape ``(tangential,)``."""
        return self.scanner.effective_radius_mm * np.sin(self._tangential_angles())

    def _tangential_angles(self) -> np.ndarray:
        """``beta_k = k pi / N`` (STIR's angular increment times the bin number), shape ``(tangential,)``."""
        return self.tangential_indices() * self.angular_increment_rad

    @property
    def angular_increment_rad(self) -> float:
        """Angle between neighbouring tangential bins seen from the centre: ``pi / N`` (half a crystal angle)."""
        return math.pi / self.scanner.detectors_per_ring

    def sinogram_z_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Axial centre and axial extent (``z_b - z_a``) of each sinogram's LORs in mm, shape ``(sinograms,)``.

        ``z = 0`` is the axial centre of the scanner. A merged sinogram uses its segment's
        average ring difference, as STIR does.
        """
        t = self._sinogram_table
        sp = self.scanner.ring_spacing_mm
        z_mid = (t["sino_ringsum"] / 2.0 - (self.scanner.num_rings - 1) / 2.0) * sp
        avg_rd = np.array([s.average_ring_difference for s in self.segments])[t["sino_segment"]]
        return z_mid, avg_rd * sp

    def lor_endpoints(
        self, views: np.ndarray | None = None, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """End points ``(p_a, p_b)`` of every LOR in mm, each shape ``(sinograms, views, tangential, 3)``.

        Coordinates are ``(x, y, z)``; ``views`` selects a subset of views (default all).
        """
        phi = self.view_angles_rad()
        if views is not None:
            phi = phi[np.asarray(views)]
        beta = self._tangential_angles()
        theta_a = phi[:, None] - np.pi / 2 + beta[None, :]
        theta_b = phi[:, None] + np.pi / 2 - beta[None, :]
        radius = self.scanner.effective_radius_mm
        z_mid, dz = self.sinogram_z_mm()
        S, V, T = len(z_mid), len(phi), len(beta)
        p_a = np.empty((S, V, T, 3))
        p_b = np.empty((S, V, T, 3))
        p_a[..., 0] = radius * np.cos(theta_a)
        p_a[..., 1] = radius * np.sin(theta_a)
        p_b[..., 0] = radius * np.cos(theta_b)
        p_b[..., 1] = radius * np.sin(theta_b)
        p_a[..., 2] = (z_mid - dz / 2)[:, None, None]
        p_b[..., 2] = (z_mid + dz / 2)[:, None, None]
        return torch.as_tensor(p_a, dtype=dtype), torch.as_tensor(p_b, dtype=dtype)

    def transaxial_crystal_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Detector numbers ``(det_a, det_b)`` of each bin's raw LORs, each shape ``(view_mashing, views, tangential)``.

        ``det_a`` sits at ``theta_a`` (see the module docstring). Odd ``N/2 - k`` bins come from
        the interleaved pair half a crystal further on, as in non-arc-corrected sinograms.
        """
        N = self.scanner.detectors_per_ring
        u = np.arange(self.scanner.num_views).reshape(self.num_views, self.view_mashing).T
        k = self.tangential_indices()
        diff = N // 2 - k  # det_b - det_a
        parity = np.mod(diff, 2)
        total = 2 * u[..., None] + parity[None, None, :]  # det_a + det_b
        det_b = np.mod((total + diff) // 2, N)
        det_a = np.mod((total - diff) // 2, N)
        return det_a.astype(np.int64), det_b.astype(np.int64)

    def describe(self) -> str:
        s, v, t = self.shape
        return (
            f"{self.scanner.name}: span {self.span}, max ring difference {self.max_rd}, "
            f"{len(self.segments)} segments, {s} sinograms x {v} views x {t} tangential bins"
        )


def iter_crystal_pairs(layout: SinogramLayout, max_elements: int = 1 << 24):
    """Yield the crystal pairs behind every bin, in chunks of ring pairs.

    Yields ``(sinogram, crystal_a, crystal_b)``: ``sinogram`` shape ``(P,)``, crystals shape
    ``(P, view_mashing, views, tangential)`` numbered ``ring * detectors_per_ring + detector``.
    Summing a per-pair quantity over axis 1 and scattering into ``sinogram`` gives bin values.
    """
    sino, ring_a, ring_b = layout.ring_pairs()
    det_a, det_b = layout.transaxial_crystal_pairs()
    n_det = layout.scanner.detectors_per_ring
    per_pair = det_a.size
    step = max(1, max_elements // per_pair)
    for start in range(0, len(sino), step):
        sl = slice(start, start + step)
        ca = ring_a[sl, None, None, None] * n_det + det_a[None]
        cb = ring_b[sl, None, None, None] * n_det + det_b[None]
        yield sino[sl], ca, cb


def segment_order(num_segments: int, positive_first: bool) -> np.ndarray:
    """Our segment indices (ascending ring difference) in another program's order, shape ``(num_segments,)``.

    ``positive_first``: 0, +1, -1, +2, -2, ... (STIR's ``standard_segment_sequence``, used by STIR/SIRF
    arrays); otherwise 0, -1, +1, -2, +2, ... (Siemens mMR list-mode files and their sinogram tables).
    """
    if num_segments % 2 == 0:
        raise ValueError(f"the number of segments must be odd, got {num_segments}")
    c = num_segments // 2
    order = [c]
    for s in range(1, c + 1):
        order += [c + s, c - s] if positive_first else [c - s, c + s]
    return np.asarray(order, dtype=np.int64)


def sinogram_order(layout: SinogramLayout, positive_first: bool) -> np.ndarray:
    """``order[i]`` = our sinogram index at position ``i`` when segments follow :func:`segment_order`."""
    sizes = np.asarray(layout.sinograms_per_segment)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    segs = segment_order(len(sizes), positive_first)
    return np.concatenate([starts[s] + np.arange(sizes[s]) for s in segs]).astype(np.int64)
