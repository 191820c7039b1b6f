"""Calibration of voxel-wise uncertainty: coverage, calibration curves, sharpness, CRPS, NLL, z-scores,
split-conformal recalibration and the frequentist coverage protocol.

A predictive distribution is given either as posterior ``samples`` of shape ``(S, ..., z, y, x)``
(sample dimension first, as ``pyro.infer.Predictive`` returns them) or as Gaussian ``mean`` and
``std`` of shape ``(..., z, y, x)``. ``truth`` has shape ``(z, y, x)`` or the same leading dimensions
as the prediction (it is broadcast). Masks are boolean ``(z, y, x)`` tensors; every statistic pools
all voxels in the mask over all leading dimensions (for example over noise realisations).

Levels are nominal central credible levels ``1 - alpha`` in (0, 1); the default grid is
:data:`DEFAULT_LEVELS`. Curves are ``dict[float, float]`` mapping nominal -> observed coverage.

Stable API (imported by the posterior-bootstrap and PnP modules):
:func:`gaussian_interval`, :func:`sample_interval`, :func:`coverage`, :func:`coverage_curve`,
:func:`calibration_error`, :func:`sharpness`, :func:`crps`, :func:`interval_score`, :func:`gaussian_nll`, :func:`z_scores`,
:func:`conformal_scales`, :func:`evaluate_uq`, :func:`frequentist_coverage`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from pyro.ops.stats import crps_empirical

DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

_NORMAL = torch.distributions.Normal(0.0, 1.0)


# --------------------------------------------------------------------------------------------- helpers
def check_levels(
    levels: Iterable[float], what: str = "nominal coverage level", allow_empty: bool = False
) -> tuple[float, ...]:
    """``levels`` as floats, each in (0, 1) (one-line ``ValueError`` naming ``what`` otherwise)."""
    levels = tuple(float(v) for v in levels)
    if not levels and not allow_empty:
        raise ValueError(f"at least one {what} is needed")
    for v in levels:
        if not 0.0 < v < 1.0:
            raise ValueError(f"{what} {v} is not in (0, 1)")
    return levels


def _mask_for(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    shape = tuple(like.shape[-3:])
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=like.device)
    mask = torch.as_tensor(mask, device=like.device).bool()
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {shape}")
    if not mask.any():
        raise ValueError("mask is empty: no voxels to evaluate")
    return mask


def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Voxels of ``x (..., z, y, x)`` inside ``mask``, flattened over the leading dimensions."""
    return x[..., mask].reshape(-1).double()


def _broadcast_truth(truth: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    truth = torch.as_tensor(truth, device=like.device).to(like.dtype)
    if truth.dim() < 3:
        raise ValueError(f"truth must have shape (z, y, x), got {tuple(truth.shape)}")
    try:
        return truth.expand_as(like)
    except RuntimeError as exc:
        raise ValueError(f"truth shape {tuple(truth.shape)} cannot be broadcast to {tuple(like.shape)}") from exc


def _check_gaussian(mean: torch.Tensor, std: torch.Tensor) -> None:
    if mean.shape != std.shape:
        raise ValueError(f"mean shape {tuple(mean.shape)} and std shape {tuple(std.shape)} differ")
    if mean.dim() < 3:
        raise ValueError(f"mean must have shape (..., z, y, x), got {tuple(mean.shape)}")
    if bool((std < 0).any()) or not bool(torch.isfinite(std).all()):
        raise ValueError("std must be finite and non-negative")


def _check_samples(samples: torch.Tensor) -> None:
    if samples.dim() < 4:
        raise ValueError(f"samples must have shape (S, ..., z, y, x), got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError("at least 2 posterior samples are needed")


def gaussian_quantile(level: float) -> float:
    """Half-width in standard deviations of the central Gaussian interval of probability ``level``."""
    (level,) = check_levels([level])
    return float(_NORMAL.icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64)))


def _scale_for(scale: float | Mapping[float, float] | None, level: float) -> float:
    if scale is None:
        return 1.0
    if isinstance(scale, Mapping):
        for key, value in scale.items():
            if abs(float(key) - level) < 1e-9:
                return float(value)
        raise ValueError(f"no conformal scale for level {level}; have {sorted(float(k) for k in scale)}")
    return float(scale)


# --------------------------------------------------------------------------------------------- intervals
def gaussian_interval(
    mean: torch.Tensor, std: torch.Tensor, level: float, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central interval ``mean -/+ scale * z_level * std`` (``scale`` from :func:`conformal_scales`)."""
    _check_gaussian(mean, std)
    half = scale * gaussian_quantile(level) * std
    return mean - half, mean + half


def sample_interval(samples: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Central credible interval from the empirical quantiles ``(1 -/+ level) / 2`` of ``samples (S, ...)``."""
    _check_samples(samples)
    (level,) = check_levels([level])
    q = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=0)
    return lo, hi


def coverage(truth: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of voxels in ``mask`` (over all leading dimensions) with ``lower <= truth <= upper``."""
    m = _mask_for(mask, lower)
    t = _broadcast_truth(truth, lower)
    inside = (t >= lower) & (t <= upper)
    return float(inside[..., m].double().mean())


def _intervals(
    level: float,
    samples: torch.Tensor | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    scale: float | Mapping[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if samples is not None:
        if scale is not None:
            raise ValueError("a conformal scale applies to Gaussian (mean, std) predictions, not to sample quantiles")
        return sample_interval(samples, level)
    if mean is None or std is None:
        raise ValueError("give either samples or both mean and std")
    return gaussian_interval(mean, std, level, _scale_for(scale, level))


def _inside(
    truth: torch.Tensor,
    levels: tuple[float, ...],
    samples: torch.Tensor | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    scale: float | Mapping[float, float] | None,
) -> dict[float, torch.Tensor]:
    """Boolean ``(..., z, y, x)`` maps of ``truth`` inside the interval, per level."""
    if samples is not None:
        if scale is not None:
            raise ValueError("a conformal scale applies to Gaussian (mean, std) predictions, not to sample quantiles")
        _check_samples(samples)
        q = torch.tensor(
            [p for v in levels for p in (0.5 - v / 2, 0.5 + v / 2)], dtype=samples.dtype, device=samples.device
        )
        bounds = torch.quantile(samples, q, dim=0)  # one sort for all levels
        t = _broadcast_truth(truth, samples[0])
        return {v: (t >= bounds[2 * i]) & (t <= bounds[2 * i + 1]) for i, v in enumerate(levels)}
    if mean is None or std is None:
        raise ValueError("give either samples or both mean and std")
    _check_gaussian(mean, std)
    t = _broadcast_truth(truth, mean)
    dist = (t - mean).abs()
    return {v: dist <= _scale_for(scale, v) * gaussian_quantile(v) * std for v in levels}


def coverage_curve(
    truth: torch.Tensor,
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    levels: Iterable[float] = DEFAULT_LEVELS,
    scale: float | Mapping[float, float] | None = None,
) -> dict[float, float]:
    """Observed coverage of the truth at each nominal level: ``{nominal: observed}``.

    Intervals come from sample quantiles when ``samples`` is given, else from the Gaussian
    ``mean -/+ scale z std`` (``scale`` a float or a per-level dict from :func:`conformal_scales`).
    """
    inside = _inside(truth, check_levels(levels), samples, mean, std, scale)
    m = _mask_for(mask, next(iter(inside.values())))
    return {v: float(b[..., m].double().mean()) for v, b in inside.items()}


def calibration_error(curve: Mapping[float, float]) -> float:
    """Mean absolute difference ``|observed - nominal|`` over the levels of a coverage curve."""
    if not curve:
        raise ValueError("empty coverage curve")
    return float(sum(abs(obs - float(nom)) for nom, obs in curve.items()) / len(curve))


def sharpness(
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    level: float = 0.9,
    scale: float | Mapping[float, float] | None = None,
) -> float:
    """Mean width of the central interval at ``level`` over the mask (image units)."""
    lo, hi = _intervals(level, samples, mean, std, scale)
    return float(_select(hi - lo, _mask_for(mask, lo)).mean())


# --------------------------------------------------------------------------------------------- scores
def crps(
    truth: torch.Tensor,
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> float:
    """Mean continuous ranked probability score over the mask (image units; lower is better).

    Samples: ``pyro.ops.stats.crps_empirical``. Gaussian: the closed form
    ``std [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with ``z = (truth - mean) / std``.
    """
    if samples is not None:
        _check_samples(samples)
        m = _mask_for(mask, samples)
        t = _broadcast_truth(truth, samples[0])
        values = crps_empirical(samples[..., m].double(), t[..., m].double())
        return float(values.mean())
    if mean is None or std is None:
        raise ValueError("give either samples or both mean and std")
    _check_gaussian(mean, std)
    m = _mask_for(mask, mean)
    mu, sd = _select(mean, m), _select(std, m).clamp_min(1e-12)
    t = _select(_broadcast_truth(truth, mean), m)
    z = (t - mu) / sd
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return float((sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))).mean())


def interval_score(
    truth: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    level: float,
    mask: torch.Tensor | None = None,
) -> float:
    """Mean interval score of central intervals at ``level`` over the mask (image units; lower is better).

    ``(u - l) + (2 / alpha) [(l - x)+ + (x - u)+]`` with ``alpha = 1 - level`` (Gneiting & Raftery 2007): a
    proper score for central intervals, so it weighs width against misses (a narrower interval that misses
    more often can score worse than a wider one).
    """
    check_levels((level,))
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} must have the same shape")
    m = _mask_for(mask, lower)
    t = _select(_broadcast_truth(truth, lower), m).double()
    lo, hi = _select(lower, m).double(), _select(upper, m).double()
    miss = (lo - t).clamp_min(0) + (t - hi).clamp_min(0)
    return float(((hi - lo) + 2 / (1 - level) * miss).mean())


def gaussian_nll(
    truth: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    mask: torch.Tensor | None = None,
    min_std: float = 1e-6,
) -> float:
    """Mean Gaussian negative log-likelihood per voxel ``0.5 log(2 pi std^2) + (t - mean)^2 / (2 std^2)``."""
    _check_gaussian(mean, std)
    m = _mask_for(mask, mean)
    mu, sd = _select(mean, m), _select(std, m).clamp_min(min_std)
    t = _select(_broadcast_truth(truth, mean), m)
    return float((0.5 * torch.log(2 * math.pi * sd**2) + 0.5 * ((t - mu) / sd) ** 2).mean())


def z_scores(
    truth: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None, min_std: float = 1e-6
) -> torch.Tensor:
    """``(truth - mean) / std`` for the voxels in the mask, flattened (float64); ideally N(0, 1)."""
    _check_gaussian(mean, std)
    m = _mask_for(mask, mean)
    t = _select(_broadcast_truth(truth, mean), m)
    return (t - _select(mean, m)) / _select(std, m).clamp_min(min_std)


def z_score_summary(z: torch.Tensor) -> dict[str, float]:
    """Mean, std and fraction beyond 1.96 of z-scores (N(0, 1): 0, 1, 0.05)."""
    z = z.double().reshape(-1)
    return {"mean": float(z.mean()), "std": float(z.std()), "frac_abs_gt_1.96": float((z.abs() > 1.96).double().mean())}


# --------------------------------------------------------------------------------------------- conformal
def conformal_quantile(scores: torch.Tensor, level: float) -> float:
    """Split-conformal quantile: the ``ceil((n + 1) level)``-th smallest score (``inf`` if that exceeds ``n``)."""
    (level,) = check_levels([level])
    scores = scores.reshape(-1).double()
    n = scores.numel()
    if n == 0:
        raise ValueError("no calibration scores")
    k = math.ceil((n + 1) * level - 1e-9)  # tolerance for float round-off in (n + 1) * level
    if k > n:
        return math.inf
    return float(torch.kthvalue(scores, k).values)


def conformal_scales(
    truth: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    mask: torch.Tensor | None = None,
    levels: Iterable[float] = DEFAULT_LEVELS,
    min_std: float = 1e-6,
) -> dict[float, float]:
    """Split-conformal recalibration of a predicted std on held-out calibration data.

    Scores ``s = |truth - mean| / std`` over the mask; ``q`` = :func:`conformal_quantile`. Returns the
    factor ``q / z_level`` per level, so that ``gaussian_interval(mean, std, level, scale)`` equals
    ``mean -/+ q std`` and has marginal coverage >= level on exchangeable data.
    """
    scores = z_scores(truth, mean, std, mask, min_std).abs()
    return {level: conformal_quantile(scores, level) / gaussian_quantile(level) for level in check_levels(levels)}


# --------------------------------------------------------------------------------------------- summaries
def _summary(
    truth: torch.Tensor,
    samples: torch.Tensor | None,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    mask: torch.Tensor | None,
    levels: tuple[float, ...],
    scale: float | Mapping[float, float] | None,
) -> dict:
    curve = coverage_curve(truth, samples=samples, mean=mean, std=std, mask=mask, levels=levels, scale=scale)
    width_level = 0.9 if 0.9 in levels else levels[-1]
    out: dict = {
        "coverage": {f"{k:.2f}": v for k, v in curve.items()},
        "calibration_error": calibration_error(curve),
        "sharpness": sharpness(samples=samples, mean=mean, std=std, mask=mask, level=width_level, scale=scale),
        "sharpness_level": width_level,
    }
    if scale is None:
        out["crps"] = crps(truth, samples=samples, mean=mean, std=std, mask=mask)
    if mean is not None and std is not None:
        out["nll"] = gaussian_nll(truth, mean, std, mask)
        out["z"] = z_score_summary(z_scores(truth, mean, std, mask))
    return out


def evaluate_uq(
    truth: torch.Tensor,
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    regions: Mapping[str, torch.Tensor] | None = None,
    levels: Iterable[float] = DEFAULT_LEVELS,
    scale: float | Mapping[float, float] | None = None,
) -> dict:
    """All calibration statistics in one JSON-ready dict, over ``mask`` and per region.

    Keys: ``coverage`` (``{"0.90": observed, ...}``), ``calibration_error``, ``sharpness`` (interval
    width at 0.9), ``crps``, and with a mean/std also ``nll`` and ``z`` (mean/std of z-scores); with
    ``samples`` only, mean and std are taken from the samples for NLL and z. ``regions`` adds the same
    under ``"regions": {name: {...}}`` (empty regions are skipped).
    """
    levels = check_levels(levels)
    if samples is not None:
        _check_samples(samples)
        if mean is None:
            mean = samples.mean(0)
        if std is None:
            std = samples.std(0)
    elif mean is None or std is None:
        raise ValueError("give either samples or both mean and std")
    out = _summary(truth, samples, mean, std, mask, levels, scale)
    if regions:
        like = mean
        out["regions"] = {
            name: _summary(truth, samples, mean, std, torch.as_tensor(region, device=like.device).bool(), levels, scale)
            for name, region in regions.items()
            if bool(torch.as_tensor(region).any())
        }
    return out


def frequentist_coverage(
    truth: torch.Tensor,
    *,
    samples: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    regions: Mapping[str, torch.Tensor] | None = None,
    levels: Iterable[float] = DEFAULT_LEVELS,
    scale: float | Mapping[float, float] | None = None,
) -> dict:
    """The frequentist protocol: M independent noise realisations of one phantom with known ``truth``.

    Predictions carry the realisation dimension: ``samples (S, M, z, y, x)`` or ``mean, std
    (M, z, y, x)``. Returns :func:`evaluate_uq` pooled over all realisations, plus
    ``num_realisations``, the per-realisation spread of coverage at each level
    (``coverage_per_realisation_std``), and ``bias`` / ``empirical_sd`` / ``mean_predicted_std`` over the
    mask: the mean over voxels of the bias of the posterior mean, of its SD across realisations, and of
    the predicted std (a well calibrated total std is close to ``sqrt(bias^2 + sd^2)``).
    """
    levels = check_levels(levels)
    if samples is not None:
        _check_samples(samples)
        if samples.dim() < 5:
            raise ValueError(f"samples must have shape (S, M, z, y, x), got {tuple(samples.shape)}")
        post_mean, post_std = samples.mean(0), samples.std(0)
        m_real = samples.shape[1]
    else:
        if mean is None or std is None:
            raise ValueError("give either samples or both mean and std")
        _check_gaussian(mean, std)
        if mean.dim() < 4:
            raise ValueError(f"mean must have shape (M, z, y, x), got {tuple(mean.shape)}")
        post_mean, post_std = mean, std
        m_real = mean.shape[0]
    if m_real < 2:
        raise ValueError("the frequentist protocol needs at least 2 noise realisations")
    out = evaluate_uq(
        truth,
        samples=samples,
        mean=None if samples is not None else mean,
        std=None if samples is not None else std,
        mask=mask,
        regions=regions,
        levels=levels,
        scale=scale,
    )
    out["num_realisations"] = int(m_real)
    inside = _inside(truth, levels, samples, mean, std, scale)
    m = _mask_for(mask, post_mean)
    spread = {f"{v:.2f}": float(b[..., m].double().mean(-1).std()) for v, b in inside.items()}
    out["coverage_per_realisation_std"] = spread
    t = _broadcast_truth(truth, post_mean[0])
    bias = (post_mean.mean(0) - t)[m].double()
    out["bias"] = float(bias.abs().mean())
    out["empirical_sd"] = float(post_mean.std(0)[m].double().mean())
    out["mean_predicted_std"] = float(post_std[..., m].double().mean())
    return out


def rank_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Spearman rank correlation of two images over the mask (e.g. predicted std vs absolute error)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    m = _mask_for(mask, a)
    x, y = _select(a, m), _select(b, m)
    if x.numel() < 3:
        raise ValueError("rank correlation needs at least 3 voxels")

    def ranks(v: torch.Tensor) -> torch.Tensor:  # average ranks of ties
        order = torch.argsort(v)
        r = torch.empty_like(v)
        r[order] = torch.arange(v.numel(), dtype=v.dtype)
        uniq, inverse = torch.unique(v, return_inverse=True)
        sums = torch.zeros_like(uniq).index_add_(0, inverse, r)
        counts = torch.zeros_like(uniq).index_add_(0, inverse, torch.ones_like(r))
        return (sums / counts)[inverse]

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = torch.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def coverage_table(results: Mapping[str, Mapping]) -> str:
    """A plain-text table of coverage per nominal level for several methods' :func:`evaluate_uq` dicts."""
    names = list(results)
    if not names:
        return ""
    levels = list(next(iter(results.values()))["coverage"])
    header = f"{'method':<20}" + "".join(f"{lv:>8}" for lv in levels) + f"{'cal.err':>9}"
    rows = [header]
    for name in names:
        cov = results[name]["coverage"]
        rows.append(
            f"{name:<20}" + "".join(f"{cov[lv]:>8.3f}" for lv in levels) + f"{results[name]['calibration_error']:>9.3f}"
        )
    return "\n".join(rows)
