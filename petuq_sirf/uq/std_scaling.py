"""Per-class recalibration of a predicted standard deviation so that it describes the total error.

A learned reconstruction's std is trained (or sampled) to describe its *noise*; on anatomy its mean is
also *biased*, and the bias differs between flat tissue, edges and lesions. Conformal calibration
(:mod:`petuq_sirf.uq.mondrian`) fixes the *coverage* of an interval per voxel class; it does not make the
std itself a faithful error bar (with heavy-tailed errors a quantile-matched std is not the RMS error).
:class:`MondrianStdScaling` matches the *second moment* instead: one factor per voxel class
(:func:`petuq_sirf.uq.mondrian.voxel_classes`, computed from the reconstruction, never the truth)

    f_c = sqrt( sum_i (truth_i - mean_i)^2 / sum_i std_i^2 )     over calibration voxels i of class c,

so that on the calibration voxels the recalibrated std ``f_c * std`` has an RMS equal to the RMS error of
the mean, *bias included*, in every class. Classes with fewer than ``min_class_size`` calibration voxels
use the pooled factor.

What it promises: on new voxels *exchangeable* with the calibration voxels of their class, the expected
ratio RMS(std) / RMSE is 1 up to the sampling error of the calibration set. It is a moment match, not
a distribution-free coverage guarantee: the Gaussian interval ``mean -/+ z f_c std`` covers the nominal
fraction only as far as the standardised errors are Gaussian. Like every calibration it breaks under
distribution shift (a phantom family, scanner or dose the calibration set did not contain).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from petuq_sirf.uq.calibration import gaussian_quantile


@dataclass
class MondrianStdScaling:
    """Per-class std factors ``factors[class]`` (see the module docstring for what they promise).

    Fit with :meth:`fit` on calibration data (truth known), apply with :meth:`scaled_std` /
    :meth:`interval` on new data. ``mean``, ``std`` and ``classes`` share a shape ``(..., z, y, x)``;
    ``truth`` broadcasts against it (e.g. one truth image for many noise realisations).
    """

    min_class_size: int = 50
    min_std: float = 1e-6
    factors: dict[int, float] = field(default_factory=dict)
    global_factor: float | None = None
    class_counts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_class_size < 1:
            raise ValueError(f"min_class_size must be >= 1, got {self.min_class_size}")
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0, got {self.min_std}")

    def fit(
        self,
        truth: torch.Tensor,
        classes: torch.Tensor,
        *,
        mean: torch.Tensor,
        std: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> MondrianStdScaling:
        """Fit the per-class factors on calibration voxels (``mask``: the voxels to use, broadcast)."""
        mean = torch.as_tensor(mean)
        std = torch.as_tensor(std)
        if tuple(std.shape) != tuple(mean.shape):
            raise ValueError(f"std shape {tuple(std.shape)} != mean shape {tuple(mean.shape)}")
        if tuple(classes.shape) != tuple(mean.shape):
            raise ValueError(f"classes shape {tuple(classes.shape)} != prediction shape {tuple(mean.shape)}")
        if bool((std < 0).any()) or not bool(torch.isfinite(std).all()):
            raise ValueError("std must be finite and non-negative")
        keep = (
            torch.ones(mean.shape, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask).bool().cpu().expand(mean.shape)
        )
        if not bool(keep.any()):
            raise ValueError("no calibration voxels (the mask is empty)")
        t = torch.as_tensor(truth).to(mean.device).double().expand(mean.shape)
        err2 = ((t - mean.double()) ** 2)[keep.to(mean.device)].cpu()
        var = (std.double().clamp_min(self.min_std) ** 2)[keep.to(std.device)].cpu()
        cls = classes.cpu()[keep]
        labels = [int(c) for c in torch.unique(cls)]
        return self.fit_sums(
            {c: float(err2[cls == c].sum()) for c in labels},
            {c: float(var[cls == c].sum()) for c in labels},
            {c: int((cls == c).sum()) for c in labels},
        )

    def fit_sums(
        self, error_sq_sum: Mapping[int, float], var_sum: Mapping[int, float], counts: Mapping[int, int]
    ) -> MondrianStdScaling:
        """Fit from per-class sums over calibration voxels: ``sum (truth - mean)^2``, ``sum std^2`` (std already
        clamped to ``min_std``) and the voxel count, each keyed by class (what a benchmark can pool over many
        data sets without keeping the images)."""
        if set(error_sq_sum) != set(var_sum) or set(var_sum) != set(counts):
            raise ValueError("error_sq_sum, var_sum and counts must have the same classes")
        if not counts or sum(counts.values()) == 0:
            raise ValueError("no calibration voxels")
        total_var = sum(var_sum.values())
        if not total_var > 0:
            raise ValueError("the summed calibration variance must be > 0")
        self.global_factor = math.sqrt(sum(error_sq_sum.values()) / total_var)
        self.class_counts = {int(c): int(n) for c, n in counts.items()}
        self.factors = {
            int(c): math.sqrt(error_sq_sum[c] / var_sum[c])
            for c, n in counts.items()
            if n >= self.min_class_size and var_sum[c] > 0
        }
        return self

    def _factor_map(self, classes: torch.Tensor) -> torch.Tensor:
        if self.global_factor is None:
            raise ValueError("MondrianStdScaling is not fitted")
        f = torch.full(classes.shape, self.global_factor, dtype=torch.float64)
        for c, value in self.factors.items():
            f[classes == c] = value
        return f

    def scaled_std(self, classes: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The recalibrated std ``f_class * std`` (float64, shape of ``std``)."""
        std = torch.as_tensor(std)
        if tuple(classes.shape) != tuple(std.shape):
            raise ValueError(f"classes shape {tuple(classes.shape)} != std shape {tuple(std.shape)}")
        return self._factor_map(classes.cpu()).to(std.device) * std.double().clamp_min(self.min_std)

    def interval(
        self, classes: torch.Tensor, level: float, *, mean: torch.Tensor, std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian interval ``mean -/+ z(level) f_class std`` (float64, shape of ``mean``)."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        half = gaussian_quantile(level) * self.scaled_std(classes, std)
        centre = torch.as_tensor(mean).double()
        return centre - half, centre + half

    def to_dict(self) -> dict:
        """JSON-ready (e.g. for a weights file's metadata or ``metrics.json``)."""
        return {
            "min_class_size": self.min_class_size,
            "min_std": self.min_std,
            "factors": {str(c): v for c, v in self.factors.items()},
            "global_factor": self.global_factor,
            "class_counts": {str(c): n for c, n in self.class_counts.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> MondrianStdScaling:
        out = cls(min_class_size=int(d["min_class_size"]), min_std=float(d["min_std"]))
        out.factors = {int(c): float(v) for c, v in d["factors"].items()}
        out.global_factor = None if d["global_factor"] is None else float(d["global_factor"])
        out.class_counts = {int(c): int(n) for c, n in d["class_counts"].items()}
        return out
