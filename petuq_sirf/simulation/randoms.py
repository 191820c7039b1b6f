"""Randoms from singles, and randoms estimated back from delayed coincidences.

Expected randoms of a crystal pair are ``2 tau S_a S_b``; folding ``2 tau`` into the singles,
a bin holds the sum of ``s_a s_b`` over its crystal pairs. The estimate fits ML singles to the
delayed sinogram (Poisson likelihood, multiplicative EM updates on fan sums) and applies the same
singles-product formula, as STIR's randoms estimation does.

Fast and lean on full scanners: a bin's crystal pairs factor into a ring pair (which sinogram)
and an in-plane detector pair (which view and tangential bin, the same for every sinogram). Per
sinogram, the expected randoms of all in-plane detector pairs form a ``detectors x detectors``
matrix ``S_a^T S_b`` over the sinogram's ring pairs, and the fan sums of the EM update are
matrix products with the ratio ``delayeds / expected`` laid out on the same matrix. So one EM
iteration is a few batched matrix products over chunks of sinograms: no list of crystal pairs
(3.5 x 10^8 for the mMR at span 11) is ever built. Measured on the full mMR span-11 geometry
(837 sinograms x 252 views x 344 bins): about 9 CPU-seconds per EM iteration and under 1 GB
(``tests/data/test_randoms_fast.py``, ``-m slow``).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from petuq_sirf.scanner.layout import SinogramLayout

_CHUNK_ELEMENTS = 1 << 23  # dense detector-pair matrices per chunk of sinograms (x 4 bytes)


class _RandomsModel:
    """The singles-product model ``E[bin] = sum over the bin's crystal pairs of s_a s_b`` of a layout."""

    def __init__(self, layout: SinogramLayout) -> None:
        sc = layout.scanner
        self.layout = layout
        self.num_rings, self.num_det = sc.num_rings, sc.detectors_per_ring
        n = self.num_det
        det_a, det_b = layout.transaxial_crystal_pairs()  # (mashing, views, tangential)
        self.pair_index = torch.from_numpy((det_a * n + det_b).reshape(det_a.shape[0], -1))  # (m, V*T)
        mask = torch.zeros(n * n, dtype=torch.float64)
        for row in self.pair_index:
            mask.index_add_(0, row, torch.ones(row.numel(), dtype=torch.float64))
        self.mask = mask.reshape(n, n)  # in-plane fan: which ordered detector pairs are binned
        sino, ring_a, ring_b = layout.ring_pairs()
        order = np.argsort(sino, kind="stable")
        sino, ring_a, ring_b = sino[order], ring_a[order], ring_b[order]
        z = layout.num_sinograms
        counts = np.bincount(sino, minlength=z)
        width = max(int(counts.max()), 1)
        slot = np.arange(len(sino)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[sino]
        ra = np.zeros((z, width), np.int64)
        rb = np.zeros((z, width), np.int64)
        w = np.zeros((z, width), np.float32)
        ra[sino, slot], rb[sino, slot], w[sino, slot] = ring_a, ring_b, 1.0
        self.ra, self.rb, self.w = torch.from_numpy(ra), torch.from_numpy(rb), torch.from_numpy(w)
        self.ring_a, self.ring_b = torch.from_numpy(ring_a), torch.from_numpy(ring_b)
        self.num_pairs = int(len(sino)) * int(self.pair_index.numel())
        self.chunk = max(1, _CHUNK_ELEMENTS // (n * n))

    def _gathered(self, s: torch.Tensor, zs: slice) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.w[zs, :, None]
        return s[self.ra[zs]] * w, s[self.rb[zs]] * w  # (z, width, det), padded slots zero

    def expected(self, s: torch.Tensor) -> torch.Tensor:
        """``E`` per bin, shape ``layout.shape`` (float32), for singles ``s`` of shape ``(rings, detectors)``."""
        s = s.to(torch.float32)
        z, v, t = self.layout.shape
        out = torch.empty((z, v * t), dtype=torch.float32)
        n = self.num_det
        for start in range(0, z, self.chunk):
            zs = slice(start, min(z, start + self.chunk))
            sa, sb = self._gathered(s, zs)
            dense = torch.bmm(sa.transpose(1, 2), sb).reshape(-1, n * n)  # [z, det_a * n + det_b]
            acc = dense[:, self.pair_index[0]]
            for row in self.pair_index[1:]:  # view mashing: several raw LORs per bin
                acc += dense[:, row]
            out[zs] = acc
        return out.reshape(z, v, t)

    def fan_sums(self, s: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """``sum over the pairs (c, c') of every crystal c of ratio[bin(c, c')] * s[c']``, shape ``(rings, detectors)``."""
        s = s.to(torch.float32)
        z = self.layout.num_sinograms
        n = self.num_det
        flat_ratio = ratio.reshape(z, -1).to(torch.float32)
        num = torch.zeros((self.num_rings, n), dtype=torch.float64)
        for start in range(0, z, self.chunk):
            zs = slice(start, min(z, start + self.chunk))
            sa, sb = self._gathered(s, zs)
            dense = torch.zeros((zs.stop - zs.start, n * n), dtype=torch.float32)
            for row in self.pair_index:
                dense[:, row] = flat_ratio[zs]
            dense = dense.reshape(-1, n, n)
            to_a = torch.bmm(sb, dense.transpose(1, 2))  # [z, slot, det_a] = sum_b r[a, b] s[ring_b, b]
            to_b = torch.bmm(sa, dense)  # [z, slot, det_b] = sum_a s[ring_a, a] r[a, b]
            num.index_add_(0, self.ra[zs].reshape(-1), to_a.reshape(-1, n).double() * self.w[zs].reshape(-1, 1))
            num.index_add_(0, self.rb[zs].reshape(-1), to_b.reshape(-1, n).double() * self.w[zs].reshape(-1, 1))
        return num

    def fan_norms(self, s: torch.Tensor) -> torch.Tensor:
        """``sum over the pairs (c, c') of every crystal c of s[c']`` (the EM denominator), shape ``(rings, detectors)``."""
        s = s.to(torch.float64)
        den = torch.zeros((self.num_rings, self.num_det), dtype=torch.float64)
        den.index_add_(0, self.ring_a, s[self.ring_b] @ self.mask.T)
        den.index_add_(0, self.ring_b, s[self.ring_a] @ self.mask)
        return den


def randoms_from_singles(layout: SinogramLayout, singles: torch.Tensor) -> torch.Tensor:
    """Expected randoms per bin from singles ``(rings, detectors_per_ring)`` (with ``2 tau`` folded in)."""
    sc = layout.scanner
    s = torch.as_tensor(singles, dtype=torch.float64)
    if tuple(s.shape) != (sc.num_rings, sc.detectors_per_ring):
        raise ValueError(f"singles must have shape {(sc.num_rings, sc.detectors_per_ring)}, got {tuple(s.shape)}")
    return _RandomsModel(layout).expected(s)


def estimate_singles_ml(
    layout: SinogramLayout, delayeds: torch.Tensor, num_iterations: int = 10, progress: bool = False
) -> torch.Tensor:
    """Maximum-likelihood singles ``(rings, detectors)`` whose products best explain ``delayeds`` (Poisson).

    ``progress``: a bar over the iterations (on a terminal only).

    EM update ``s_a <- s_a * sum_b (D/E) s_b / sum_b s_b`` over the fan of crystal ``a``. From
    uniform singles, 10 iterations put the randoms within 0.04 % (NRMSE; 0.1 % max) of 100
    iterations on a test-3d scan of 3 x 10^5 delayeds (5: 0.2 %, 3: 0.6 %).
    """
    d = torch.as_tensor(delayeds, dtype=torch.float32)
    if tuple(d.shape) != layout.shape:
        raise ValueError(f"delayeds have shape {tuple(d.shape)}, expected {layout.shape}")
    if not torch.isfinite(d).all() or (d < 0).any():
        raise ValueError("delayeds must be finite, non-negative counts")
    model = _RandomsModel(layout)
    level = float(d.sum(dtype=torch.float64)) / max(model.num_pairs, 1)
    s = torch.full((model.num_rings, model.num_det), max(level, 1e-24) ** 0.5, dtype=torch.float64)
    for _ in tqdm(range(num_iterations), desc="randoms estimation (ML singles)", disable=not progress or None):
        expected = model.expected(s)
        ratio = torch.where(expected > 0, d / expected.clamp_min(1e-30), torch.zeros_like(d))
        del expected
        num = model.fan_sums(s, ratio)
        del ratio
        den = model.fan_norms(s)
        s = torch.where(den > 0, s * num / den.clamp_min(1e-300), s)
    return s.float()


def estimate_randoms(
    layout: SinogramLayout, delayeds: torch.Tensor, num_iterations: int = 10, progress: bool = False
) -> torch.Tensor:
    """Smooth randoms estimate per bin from a (noisy) delayed sinogram (ML singles, then their products)."""
    return randoms_from_singles(layout, estimate_singles_ml(layout, delayeds, num_iterations, progress))
