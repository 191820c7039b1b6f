"""Detector normalisation: per-crystal efficiencies -> per-bin efficiency factors."""

from __future__ import annotations

import numpy as np
import torch

from petuq_sirf.scanner.geometry import ScannerGeometry
from petuq_sirf.scanner.layout import SinogramLayout, iter_crystal_pairs


def crystal_efficiencies(
    scanner: ScannerGeometry, spread: float = 0.1, block_size: int = 8, seed: int = 0
) -> torch.Tensor:
    """Random crystal efficiencies ``(rings, detectors_per_ring)``: log-normal spread plus a block profile.

    Crystals at the edge of a transaxial block of ``block_size`` are 10 % less efficient, as in
    block detectors; the mean efficiency is 1.
    """
    if spread < 0:
        raise ValueError(f"efficiency spread must be >= 0, got {spread}")
    rng = np.random.default_rng(seed)
    eff = rng.lognormal(0.0, spread, size=(scanner.num_rings, scanner.detectors_per_ring))
    pos = np.arange(scanner.detectors_per_ring) % block_size
    eff *= np.where((pos == 0) | (pos == block_size - 1), 0.9, 1.0)[None, :]
    return torch.as_tensor(eff / eff.mean(), dtype=torch.float32)


def bin_efficiencies(layout: SinogramLayout, efficiencies: torch.Tensor | None = None) -> torch.Tensor:
    """Per-bin detection efficiency: the sum over the bin's crystal pairs of ``eps_a * eps_b``.

    With all efficiencies 1 this is the number of crystal pairs merged into each bin (span and
    view mashing), so the geometric projector stays per-LOR as in STIR. Shape ``layout.shape``.
    """
    sc = layout.scanner
    if efficiencies is None:
        efficiencies = torch.ones(sc.num_rings, sc.detectors_per_ring)
    eff = torch.as_tensor(efficiencies, dtype=torch.float64)
    if tuple(eff.shape) != (sc.num_rings, sc.detectors_per_ring):
        raise ValueError(f"efficiencies must have shape (rings, detectors) = {(sc.num_rings, sc.detectors_per_ring)}")
    flat = eff.reshape(-1)
    out = torch.zeros(layout.shape, dtype=torch.float64)
    for sino, ca, cb in iter_crystal_pairs(layout):
        vals = (flat[torch.from_numpy(ca)] * flat[torch.from_numpy(cb)]).sum(dim=1)
        out.index_add_(0, torch.from_numpy(sino), vals)
    return out.float()
