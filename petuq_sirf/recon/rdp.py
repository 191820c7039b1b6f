"""The relative difference prior (Nuyts et al. 2002) with PETRIC's settings as defaults.

``R(x) = sum_j sum_{k in N(j)} w_jk kappa_j kappa_k (x_j - x_k)^2 / (x_j + x_k + gamma |x_j - x_k| + eps)``

summed over ordered neighbour pairs of the 3x3x3 neighbourhood (3x3 for single-slice images),
``w_jk`` = 1 / distance in voxels. The penalty is ``beta R(x)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


def _half_neighbourhood(image_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """One offset of every neighbour pair (the other is its negative)."""
    dims = [(-1, 0, 1) if n > 1 else (0,) for n in image_shape]
    offsets = [o for o in itertools.product(*dims) if o > (0, 0, 0)]
    return offsets


def _pair_slices(offset: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting voxel ``j`` and its neighbour ``j + offset`` wherever both exist."""
    a, b = [], []
    for o in offset:
        if o > 0:
            a.append(slice(0, -o))
            b.append(slice(o, None))
        elif o < 0:
            a.append(slice(-o, None))
            b.append(slice(0, o))
        else:
            a.append(slice(None))
            b.append(slice(None))
    return tuple(a), tuple(b)


@dataclass
class RelativeDifferencePrior:
    """RDP penalty ``beta R(x)`` on images ``(..., z, y, x)``.

    Attributes:
        beta: penalty strength (PETRIC default 1/700 for its data; scale with counts).
        gamma: edge-preservation parameter (PETRIC: 2).
        epsilon: small positive constant (PETRIC: 1e-3 x max of an OSEM image).
        kappa: optional spatially varying weights, shape ``(z, y, x)``.
    """

    beta: float = 1.0 / 700.0
    gamma: float = 2.0
    epsilon: float = 1e-3
    kappa: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.beta < 0 or self.gamma < 0 or self.epsilon <= 0:
            raise ValueError("RDP needs beta >= 0, gamma >= 0 and epsilon > 0")

    @classmethod
    def scaled_for(
        cls, sensitivity: torch.Tensor, reference_image: torch.Tensor, strength: float = 0.01, gamma: float = 2.0
    ) -> RelativeDifferencePrior:
        """A prior whose strength does not depend on the count level or activity units.

        The RDP gradient is invariant to scaling ``x`` while the likelihood gradient scales with
        the sensitivity, so ``beta = strength * mean(sensitivity over its support)``;
        ``epsilon = 1e-3 * max(reference_image)`` (PETRIC, with an OSEM reference image).
        """
        sens = sensitivity[sensitivity > 0]
        if sens.numel() == 0:
            raise ValueError("sensitivity image is zero everywhere")
        eps = 1e-3 * float(reference_image.max())
        return cls(beta=strength * float(sens.mean()), gamma=gamma, epsilon=max(eps, 1e-12))

    def _pairs(self, x: torch.Tensor):
        shape = tuple(x.shape[-3:])
        for off in _half_neighbourhood(shape):
            sa, sb = _pair_slices(off)
            full_a = (Ellipsis, *sa)
            full_b = (Ellipsis, *sb)
            w = 1.0 / math.sqrt(sum(o * o for o in off))
            if self.kappa is not None:
                k = self.kappa.to(x)
                w = w * k[sa] * k[sb]
            yield full_a, full_b, w

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``beta R(x)`` (ordered pairs, so each unordered pair counts twice); batch dims kept."""
        total = torch.zeros(x.shape[:-3], dtype=x.dtype, device=x.device)
        for ia, ib, w in self._pairs(x):
            a, b = x[ia], x[ib]
            d = a - b
            term = w * d * d / (a + b + self.gamma * d.abs() + self.epsilon)
            total = total + 2 * term.sum(dim=(-3, -2, -1))
        return self.beta * total

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``beta grad R(x)``, same shape as ``x``."""
        g = torch.zeros_like(x)
        for ia, ib, w in self._pairs(x):
            a, b = x[ia], x[ib]
            d = a - b
            den = a + b + self.gamma * d.abs() + self.epsilon
            # d/da of d^2/den with den' = 1 + gamma sign(d); d/db has den' = 1 - gamma sign(d)
            sgn = torch.sign(d)
            ga = 2 * d / den - d * d * (1 + self.gamma * sgn) / den**2
            gb = -2 * d / den - d * d * (1 - self.gamma * sgn) / den**2
            g[ia] += 2 * w * ga
            g[ib] += 2 * w * gb
        return self.beta * g

    def hessian_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of ``beta`` times the Hessian of ``R``: ``2 (2 x_k + eps)^2 / den^3`` per pair."""
        h = torch.zeros_like(x)
        for ia, ib, w in self._pairs(x):
            a, b = x[ia], x[ib]
            den = a + b + self.gamma * (a - b).abs() + self.epsilon
            h[ia] += 2 * w * 2 * (2 * b + self.epsilon) ** 2 / den**3
            h[ib] += 2 * w * 2 * (2 * a + self.epsilon) ** 2 / den**3
        return self.beta * h
