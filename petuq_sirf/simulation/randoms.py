"""Randoms from singles, and randoms estimated back from delayed coincidences.

Expected randoms of a crystal pair are ``2 tau S_a S_b``; folding ``2 tau`` into the singles,
a bin holds the sum of ``s_a s_b`` over its crystal pairs. The estimate fits ML singles to the
delayed sinogram (Poisson likelihood, multiplicative fixed-point updates on fan sums) and
applies the same singles-product formula, as STIR's randoms estimation does.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from petuq_sirf.scanner.layout import SinogramLayout, iter_crystal_pairs


def randoms_from_singles(layout: SinogramLayout, singles: torch.Tensor) -> torch.Tensor:
    """Expected randoms per bin from singles ``(rings, detectors_per_ring)`` (with ``2 tau`` folded in)."""
    sc = layout.scanner
    s = torch.as_tensor(singles, dtype=torch.float64)
    if tuple(s.shape) != (sc.num_rings, sc.detectors_per_ring):
        raise ValueError(f"singles must have shape {(sc.num_rings, sc.detectors_per_ring)}, got {tuple(s.shape)}")
    flat = s.reshape(-1)
    out = torch.zeros(layout.shape, dtype=torch.float64)
    for sino, ca, cb in iter_crystal_pairs(layout):
        out.index_add_(0, torch.from_numpy(sino), (flat[torch.from_numpy(ca)] * flat[torch.from_numpy(cb)]).sum(1))
    return out.float()


def estimate_singles_ml(
    layout: SinogramLayout, delayeds: torch.Tensor, num_iterations: int = 30, progress: bool = False
) -> torch.Tensor:
    """Maximum-likelihood singles ``(rings, detectors)`` whose products best explain ``delayeds`` (Poisson).

    ``progress``: a bar over the iterations (on a terminal only).

    Update ``s_a <- s_a * sum_b (D/E) s_b / sum_b s_b`` over the fan of crystal ``a``.
    """
    sc = layout.scanner
    d = torch.as_tensor(delayeds, dtype=torch.float64)
    if tuple(d.shape) != layout.shape:
        raise ValueError(f"delayeds have shape {tuple(d.shape)}, expected {layout.shape}")
    if not torch.isfinite(d).all() or (d < 0).any():
        raise ValueError("delayeds must be finite, non-negative counts")
    n = sc.num_crystals
    pairs = [(torch.from_numpy(s), torch.from_numpy(a), torch.from_numpy(b)) for s, a, b in iter_crystal_pairs(layout)]
    num_pairs = sum(a.numel() for _, a, _ in pairs)
    s = torch.full((n,), float((d.sum() / max(num_pairs, 1)).clamp_min(1e-12).sqrt()), dtype=torch.float64)
    for _ in tqdm(range(num_iterations), desc="randoms estimation (ML singles)", disable=not progress or None):
        expected = torch.zeros(layout.shape, dtype=torch.float64)
        for sino, a, b in pairs:
            expected.index_add_(0, sino, (s[a] * s[b]).sum(1))
        ratio = torch.where(expected > 0, d / expected.clamp_min(1e-30), torch.zeros_like(d))
        num = torch.zeros(n, dtype=torch.float64)
        den = torch.zeros(n, dtype=torch.float64)
        for sino, a, b in pairs:
            r = ratio[sino].unsqueeze(1).expand(a.shape)
            num.index_add_(0, a.reshape(-1), (r * s[b]).reshape(-1))
            num.index_add_(0, b.reshape(-1), (r * s[a]).reshape(-1))
            den.index_add_(0, a.reshape(-1), s[b].reshape(-1))
            den.index_add_(0, b.reshape(-1), s[a].reshape(-1))
        s = torch.where(den > 0, s * num / den.clamp_min(1e-30), s)
    return s.reshape(sc.num_rings, sc.detectors_per_ring).float()


def estimate_randoms(
    layout: SinogramLayout, delayeds: torch.Tensor, num_iterations: int = 30, progress: bool = False
) -> torch.Tensor:
    """Smooth randoms estimate per bin from a (noisy) delayed sinogram."""
    return randoms_from_singles(layout, estimate_singles_ml(layout, delayeds, num_iterations, progress))
