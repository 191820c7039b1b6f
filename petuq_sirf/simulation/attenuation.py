"""Attenuation factors ``exp(-integral mu dl)`` from a mu-map in 1/cm."""

from __future__ import annotations

import torch

from petuq_sirf.operators.projector import RayTracingProjector


def attenuation_factors(projector: RayTracingProjector, mu_per_cm: torch.Tensor) -> torch.Tensor:
    """Survival probability per bin, shape ``projector.data_shape``; ``mu_per_cm`` shape ``(z, y, x)`` in 1/cm.

    The projector must be purely geometric (no resolution model): line integrals are in mm.
    """
    mu = torch.as_tensor(mu_per_cm)
    if not torch.isfinite(mu).all() or (mu < 0).any():
        raise ValueError("mu-map must be finite and >= 0 (1/cm)")
    if mu.max() > 1.0:
        raise ValueError(
            f"mu-map maximum {mu.max().item():.3g} is implausible for 1/cm at 511 keV (water 0.096, bone 0.15); "
            "is it in 1/mm x 10 or Hounsfield units?"
        )
    with torch.no_grad():
        return torch.exp(-projector.forward(mu) / 10.0)
