"""ROI-level uncertainty: the distribution of the mean uptake in a lesion / VOI, its interval, ROI conformal.

Clinicians read ROI means (SUVmean of a lesion), not voxels. For a method producing posterior (or
bootstrap) ``samples (S, ..., z, y, x)`` the ROI-mean distribution is exact: the ROI mean of every
sample (:func:`roi_mean_samples`). For a method producing only ``mean, std`` per voxel the ROI-mean std
depends on the unknown voxel correlations: :func:`roi_mean_gaussian` gives the fully correlated bound
(``mean of std``, an upper bound of the std of the ROI average) or the independent one
(``sqrt(sum var) / n``, far too small for smooth reconstructions); calibrate either with
:class:`RoiConformal`.

ROI conformal calibration: scores ``|t_roi - m_roi| / s_roi`` over calibration ROIs (lesions of
calibration phantoms, over noise realisations); the interval ``m_roi -/+ q s_roi`` with ``q`` the
``ceil((n + 1) level)``-th smallest score covers the true ROI mean of a new ROI exchangeable with the
calibration ROIs with probability >= level - marginally over the calibration distribution (phantom
family, lesion sizes and contrasts, dose, noise). ``groups`` (e.g. lesion-size bins) make it
Mondrian: one quantile per group. Not valid under shift (other families, lesion types, doses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from petuq_sirf.uq.calibration import DEFAULT_LEVELS, conformal_quantile, gaussian_quantile

CORRELATIONS = ("correlated", "independent")


def _mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(mask).bool().to(like.device)
    if tuple(m.shape) != tuple(like.shape[-3:]):
        raise ValueError(f"ROI mask shape {tuple(m.shape)} does not match image shape {tuple(like.shape[-3:])}")
    if not bool(m.any()):
        raise ValueError("ROI mask is empty")
    return m


def roi_mean(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``image (..., z, y, x)`` over the ROI, shape ``(...)`` (float64)."""
    m = _mask(mask, image)
    return image[..., m].double().mean(-1)


def roi_mean_samples(samples: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ROI means of posterior / bootstrap samples ``(S, ..., z, y, x)`` -> ``(S, ...)``: the ROI-mean distribution."""
    if samples.dim() < 4:
        raise ValueError(f"samples must have shape (S, ..., z, y, x), got {tuple(samples.shape)}")
    return roi_mean(samples, mask)


def roi_mean_gaussian(
    mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor, correlation: str = "correlated"
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROI mean and its std from voxel ``mean, std (..., z, y, x)``.

    ``correlation="correlated"``: ``std_roi = mean(std)`` (voxel errors fully correlated, an upper bound);
    ``"independent"``: ``sqrt(sum std^2) / n`` (a lower bound for positively correlated errors).
    """
    if correlation not in CORRELATIONS:
        raise ValueError(f"unknown correlation {correlation!r}; choose one of {', '.join(CORRELATIONS)}")
    if mean.shape != std.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} shapes differ")
    m = _mask(mask, mean)
    centre = mean[..., m].double().mean(-1)
    s = std[..., m].double()
    spread = s.mean(-1) if correlation == "correlated" else (s**2).sum(-1).sqrt() / s.shape[-1]
    return centre, spread


def roi_interval_samples(roi_samples: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Central interval from the quantiles of ROI-mean samples ``(S, ...)``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=roi_samples.dtype)
    lo, hi = torch.quantile(roi_samples, q.to(roi_samples.device), dim=0)
    return lo, hi


def roi_interval_gaussian(centre: torch.Tensor, spread: torch.Tensor, level: float, scale: float = 1.0):
    """``centre -/+ scale z_level spread``."""
    half = scale * gaussian_quantile(level) * spread
    return centre - half, centre + half


def roi_coverage(truth_means: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> float:
    """Fraction of ROIs (all entries) whose true mean lies in ``[lower, upper]``."""
    t = torch.as_tensor(truth_means).to(lower).expand(lower.shape)
    return float(((t >= lower) & (t <= upper)).double().mean())


@dataclass
class RoiConformal:
    """Split-conformal factors for ROI-mean intervals ``centre -/+ q spread`` (per group, if given)."""

    levels: tuple[float, ...] = DEFAULT_LEVELS
    min_group_size: int = 20
    quantiles: dict[float, dict[str, float]] = field(default_factory=dict)
    global_quantiles: dict[float, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def fit(
        self,
        truth_means: torch.Tensor,
        centre: torch.Tensor,
        spread: torch.Tensor,
        groups: Sequence[str] | None = None,
    ) -> RoiConformal:
        """Fit on calibration ROIs: 1D tensors of equal length (one entry per ROI and realisation)."""
        t, c, s = (torch.as_tensor(v).double().reshape(-1) for v in (truth_means, centre, spread))
        if not (t.numel() == c.numel() == s.numel()) or t.numel() == 0:
            raise ValueError("truth_means, centre and spread must be non-empty and of equal length")
        scores = (t - c).abs() / s.clamp_min(1e-12)
        g = list(groups) if groups is not None else ["all"] * t.numel()
        if len(g) != t.numel():
            raise ValueError(f"{len(g)} groups for {t.numel()} ROIs")
        names = sorted(set(g))
        self.counts = {n: g.count(n) for n in names}
        idx = {n: torch.tensor([i for i, v in enumerate(g) if v == n]) for n in names}
        self.quantiles, self.global_quantiles = {}, {}
        for level in self.levels:
            self.global_quantiles[level] = conformal_quantile(scores, level)
            self.quantiles[level] = {
                n: conformal_quantile(scores[idx[n]], level) for n in names if self.counts[n] >= self.min_group_size
            }
        return self

    def factor(self, level: float, group: str | None = None) -> float:
        """``q`` for ``level`` (and ``group``; the pooled ``q`` for small or unknown groups)."""
        for v in self.levels:
            if abs(v - level) < 1e-9:
                if group is not None and group in self.quantiles.get(v, {}):
                    return self.quantiles[v][group]
                if v not in self.global_quantiles:
                    raise ValueError("RoiConformal is not fitted")
                return self.global_quantiles[v]
        raise ValueError(f"no ROI conformal factor for level {level}; have {self.levels}")

    def interval(
        self, centre: torch.Tensor, spread: torch.Tensor, level: float, groups: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c, s = torch.as_tensor(centre).double(), torch.as_tensor(spread).double()
        if groups is None:
            q = torch.full_like(c, self.factor(level))
        else:
            q = torch.tensor([self.factor(level, g) for g in groups], dtype=torch.float64).reshape(c.shape)
        return c - q * s, c + q * s

    def to_dict(self) -> dict:
        return {
            "levels": list(self.levels),
            "min_group_size": self.min_group_size,
            "quantiles": {f"{lv:.2f}": dict(qs) for lv, qs in self.quantiles.items()},
            "global_quantiles": {f"{lv:.2f}": v for lv, v in self.global_quantiles.items()},
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> RoiConformal:
        out = cls(levels=tuple(d["levels"]), min_group_size=int(d["min_group_size"]))
        out.quantiles = {float(k): {g: float(q) for g, q in v.items()} for k, v in d["quantiles"].items()}
        out.global_quantiles = {float(k): float(v) for k, v in d["global_quantiles"].items()}
        out.counts = {g: int(n) for g, n in d["counts"].items()}
        return out


def equivalent_diameter_mm(mask: torch.Tensor, voxel_size_mm: Sequence[float]) -> float:
    """Diameter (mm) of the disc (ROI in one slice) or sphere (several slices) with the ROI's area / volume.

    ``mask`` is ``(z, y, x)``; ``voxel_size_mm`` is ``(dz, dy, dx)``. The size a reader of a drawn VOI knows,
    so a size-grouped calibration (:meth:`RoiConformal.fit` with ``groups``) can be applied to a new scan.
    """
    m = torch.as_tensor(mask).bool()
    if m.dim() != 3 or len(voxel_size_mm) != 3:
        raise ValueError(f"mask must be (z, y, x) with a 3-element voxel size, got {tuple(m.shape)}")
    n = int(m.sum())
    if n == 0:
        raise ValueError("the ROI is empty")
    dz, dy, dx = (float(v) for v in voxel_size_mm)
    if int(m.any(-1).any(-1).sum()) == 1:
        return 2.0 * math.sqrt(n * dy * dx / math.pi)
    return (6.0 * n * dz * dy * dx / math.pi) ** (1.0 / 3.0)


def size_group(diameter_mm: float, edges_mm: Iterable[float] = (10.0, 20.0)) -> str:
    """A lesion-size bin label, e.g. ``"<10mm"``, ``"10-20mm"``, ``">=20mm"``."""
    e = sorted(edges_mm)
    if diameter_mm < e[0]:
        return f"<{e[0]:g}mm"
    for lo, hi in zip(e, e[1:]):
        if lo <= diameter_mm < hi:
            return f"{lo:g}-{hi:g}mm"
    return f">={e[-1]:g}mm"


def roi_summary(
    truth: torch.Tensor,
    rois: Mapping[str, torch.Tensor],
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    levels: Iterable[float] = DEFAULT_LEVELS,
    correlation: str = "correlated",
) -> dict:
    """Per-ROI true mean, predicted mean/std of the ROI mean and its raw interval coverage per level.

    Predictions carry a realisation dimension: ``samples (S, M, z, y, x)`` or ``mean, std (M, z, y, x)``.
    Returns ``{roi: {"truth", "centre" [M], "spread" [M], "coverage": {"0.90": ...}}}``.
    """
    out = {}
    for name, mask in rois.items():
        t = float(roi_mean(torch.as_tensor(truth), mask))
        if samples is not None:
            rs = roi_mean_samples(samples, mask)  # (S, M)
            centre, spread = rs.mean(0), rs.std(0)
            cov = {f"{lv:.2f}": roi_coverage(torch.tensor(t), *roi_interval_samples(rs, lv)) for lv in levels}
        else:
            centre, spread = roi_mean_gaussian(mean, std, mask, correlation)
            cov = {
                f"{lv:.2f}": roi_coverage(torch.tensor(t), *roi_interval_gaussian(centre, spread, lv)) for lv in levels
            }
        out[name] = {"truth": t, "centre": centre.tolist(), "spread": spread.tolist(), "coverage": cov}
    return out
