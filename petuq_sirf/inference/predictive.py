"""Posterior predictive summaries of a denoiser: mean, epistemic / aleatoric / total std, intervals.

A denoiser returns, per posterior sample ``s`` of the weights, a mean image ``mu_s`` and an aleatoric
variance ``v_s`` (shape ``(S, ..., y, x)``). The predictive distribution of the true image is the
mixture ``(1/S) sum_s N(mu_s, v_s)``: its mean is ``mean_s mu_s``, its variance
``var_s mu_s`` (epistemic) ``+ mean_s v_s`` (aleatoric).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.io.image_io import write_image
from petuq_sirf.scanner.image_geometry import ImageGeometry


@dataclass
class PosteriorSamples:
    """``mean`` and aleatoric ``var``, both ``(S, ..., y, x)``, in image units (variance: units^2)."""

    mean: torch.Tensor
    var: torch.Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.var.shape:
            raise ValueError(f"mean {tuple(self.mean.shape)} and var {tuple(self.var.shape)} shapes differ")

    @property
    def num_samples(self) -> int:
        return self.mean.shape[0]

    @property
    def predictive_mean(self) -> torch.Tensor:
        return self.mean.mean(0)

    @property
    def epistemic_std(self) -> torch.Tensor:
        if self.num_samples < 2:
            return torch.zeros_like(self.mean[0])
        return self.mean.var(0, unbiased=False).sqrt()

    @property
    def aleatoric_std(self) -> torch.Tensor:
        return self.var.mean(0).sqrt()

    @property
    def total_std(self) -> torch.Tensor:
        return (self.epistemic_std**2 + self.aleatoric_std**2).sqrt()

    def draw(self, per_sample: int = 4, seed: int = 0) -> torch.Tensor:
        """Samples of the predictive mixture, ``(S * per_sample, ..., y, x)``."""
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((per_sample, *self.mean.shape), generator=gen)
        return (self.mean[None] + eps * self.var.sqrt()[None]).reshape(-1, *self.mean.shape[1:])

    def interval(self, level: float = 0.9, per_sample: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Central predictive interval from quantiles of :meth:`draw` (at least 64 draws)."""
        if not 0 < level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {level}")
        per_sample = max(per_sample, -(-64 // self.num_samples))
        q = torch.tensor([0.5 - level / 2, 0.5 + level / 2])
        lo, hi = torch.quantile(self.draw(per_sample, seed), q, dim=0)
        return lo, hi

    def maps(self, level: float = 0.9) -> dict[str, torch.Tensor]:
        """The images written by :meth:`write`: mean, stds, interval bounds."""
        lo, hi = self.interval(level)
        pct = int(round(level * 100))
        return {
            "mean": self.predictive_mean,
            "std": self.total_std,
            "epistemic_std": self.epistemic_std,
            "aleatoric_std": self.aleatoric_std,
            f"lower{pct}": lo,
            f"upper{pct}": hi,
        }

    def write(
        self, out_dir: str | Path, geometry: ImageGeometry, level: float = 0.9, suffix: str = ".nii.gz"
    ) -> dict[str, Path]:
        """Write each map of :meth:`maps` as ``out_dir/<name><suffix>`` on ``geometry`` ``(z, y, x)``.

        The maps must have ``geometry``'s shape, or ``(y, x)`` for a single-slice geometry.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, image in self.maps(level).items():
            array = image.detach().cpu().numpy().astype(np.float32).reshape(geometry.shape)
            paths[name] = write_image(out_dir / f"{name}{suffix}", array, geometry)
        return paths
