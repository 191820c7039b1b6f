"""Confidence sets with guaranteed coverage from the Poisson likelihood (sequential likelihood mixing).

Counts in disjoint time frames ``t = 1..F`` are independent Poisson with means ``tau_t ybar(x)``,
``ybar(x) = m * G x + b`` the acquisition model of the whole scan and ``tau_t`` the frame's share of
the scan's expected counts. With ``l_t(x)`` the frame's log-likelihood and any *predictable*
estimates ``x_hat_{t-1}`` (computed from frames before ``t`` only, by any method),

    M_t(x) = prod_{s <= t} p(y_s | x_hat_{s-1}) / p(y_s | x)

is a non-negative martingale with mean 1 under the true image ``x*``. Ville's inequality gives
``P(exists t: M_t(x*) >= 1/alpha) <= alpha``, so the sets

    C_t = {x >= 0 : sum_{s<=t} l_s(x) >= sum_{s<=t} l_s(x_hat_{s-1}) - log(1/alpha)}

contain ``x*`` for all ``t`` simultaneously with probability >= 1 - alpha, whatever the estimator
and however the stopping frame is chosen. The data constants (``log y!``, ``y log tau``) cancel;
both sides use :func:`~petuq_sirf.recon.likelihood.poisson_log_likelihood` with
``expected_scale = tau``. The ROI-mean intervals over ``C_t`` come from
:mod:`petuq_sirf.confidence.roi_solver`; the running interval ``[max_s lower_s, min_s upper_s]`` contains
the ROI range over the running intersection ``C_1 ∩ ... ∩ C_t``, is valid simultaneously too and
never widens.

Without a data-free first guess (``initial=None``) frame 1 is a burn-in: it is used only by the
estimator, and the sets use frames ``2..t`` (the martingale starts at frame 2; still valid).

Prior mixing (:func:`prior_mixing_threshold`): for images ``x_1..x_K`` drawn independently of an
evaluation split ``y_B`` (e.g. posterior draws fitted on the other split), ``mean_k p(y_B|x_k)/p(y_B|x*)``
has expectation 1, and Markov's inequality makes
``{x : l_B(x) >= log mean_k exp l_B(x_k) - log(1/alpha)}`` a 1 - alpha confidence set (one look, not
anytime).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from petuq_sirf.confidence.roi_solver import SolverConfig, roi_bounds, roi_weights
from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.recon.likelihood import poisson_log_likelihood

Estimator = Callable[[AcquisitionModel, torch.Tensor], torch.Tensor]
"""``estimator(model_past, counts_past) -> image``: ``model_past`` has its terms scaled by the share of
the scan seen so far, so the image is in the units of the full-scan model."""


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


@dataclass
class Frames:
    """Time frames: ``counts`` ``(F, *data_shape)`` prompts per frame, ``fractions`` ``(F,)`` each frame's share
    ``tau_t`` of the full scan's expected counts, ``edges_s`` the ``F + 1`` frame boundaries in s."""

    counts: torch.Tensor
    fractions: torch.Tensor
    edges_s: list[float]

    def __post_init__(self) -> None:
        if self.counts.shape[0] != len(self.fractions) or len(self.edges_s) != len(self.fractions) + 1:
            raise ValueError("frames: counts, fractions and edges disagree in length")
        totals = self.counts.reshape(self.counts.shape[0], -1).sum(1)
        for t, n in enumerate(totals.tolist()):
            if n <= 0:
                raise ValueError(
                    f"time frame {t + 1} ({self.edges_s[t]:g}-{self.edges_s[t + 1]:g} s) has no events; use fewer frames"
                )
        if not (self.fractions > 0).all():
            raise ValueError("frame fractions must be > 0")

    @property
    def num_frames(self) -> int:
        return self.counts.shape[0]


def frame_fractions(edges_s: Sequence[float], duration_s: float, half_life_s: float | None = None) -> torch.Tensor:
    """Shares ``tau_t`` of the scan's expected counts per frame: durations / scan duration, or with decay
    ``int_frame exp(-lambda t) / int_scan exp(-lambda t)`` (the whole mean decays alike: an approximation for
    randoms, which fall faster)."""
    e = np.asarray(edges_s, dtype=np.float64)
    if half_life_s is None:
        return torch.as_tensor(np.diff(e) / duration_s)
    lam = math.log(2) / half_life_s
    cdf = 1.0 - np.exp(-lam * e)
    return torch.as_tensor(np.diff(cdf) / (1.0 - math.exp(-lam * duration_s)))


def frame_listmode(
    events,
    num_frames: int,
    duration_s: float | None = None,
    edges_s: Sequence[float] | None = None,
    half_life_s: float | None = None,
) -> Frames:
    """Histogram the prompts of :class:`~petuq_sirf.io.listmode.ListModeEvents` into time frames.

    Equal frames over ``[0, duration_s]`` (default: the last event time rounded up to 1 s) unless
    ``edges_s`` is given. The model's terms must describe the whole ``duration_s``.
    """
    if len(events) == 0:
        raise ValueError("the list-mode file has no events")
    if duration_s is None:
        duration_s = float(math.ceil(events.times_ms.max() / 1000.0 + 1e-9))
    if edges_s is None:
        if num_frames < 1:
            raise ValueError(f"--frames must be >= 1, got {num_frames}")
        edges_s = list(np.linspace(0.0, duration_s, num_frames + 1))
    edges = [float(e) for e in edges_s]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("frame edges must increase")
    counts = []
    for a, b in zip(edges, edges[1:]):
        stop = b * 1000.0 if b < edges[-1] else math.inf
        sel = (events.times_ms >= a * 1000.0) & (events.times_ms < stop) & events.prompt
        c = np.bincount(events.bins[sel], minlength=int(np.prod(events.data_shape)))
        counts.append(torch.as_tensor(c.reshape(events.data_shape), dtype=torch.float32))
    return Frames(torch.stack(counts), frame_fractions(edges, duration_s, half_life_s), edges)


def frame_counts(expected: torch.Tensor, num_frames: int, duration_s: float, generator: torch.Generator) -> Frames:
    """Independent Poisson frames ``y_t ~ Poisson(tau_t * expected)`` of equal length (simulation)."""
    tau = torch.full((num_frames,), 1.0 / num_frames, dtype=torch.float64)
    counts = torch.stack([torch.poisson(expected.double() * float(t), generator=generator).float() for t in tau])
    return Frames(counts, tau, list(np.linspace(0.0, duration_s, num_frames + 1)))


def frame_log_likelihood(model: AcquisitionModel, y: torch.Tensor, tau: float, x: torch.Tensor) -> torch.Tensor:
    """``l_t(x)`` up to the data constant: ``sum(y log ybar(x) - tau ybar(x))`` (float64)."""
    return poisson_log_likelihood(y.double(), model.forward(x).double(), float(tau))


def past_model(model: AcquisitionModel, share: float) -> AcquisitionModel:
    """The model of the first ``share`` of the scan: terms scaled by ``share`` (images in full-scan units)."""
    return model.with_terms(model.multiplicative * share, model.additive * share)


def check_estimate(x: torch.Tensor, model: AcquisitionModel, name: str, frame: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if tuple(x.shape) != tuple(model.image_shape):
        raise ValueError(
            f"estimator {name!r} returned shape {tuple(x.shape)} at frame {frame}, expected {model.image_shape}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"estimator {name!r} returned an image with NaN or infinite values at frame {frame}")
    if (x < 0).any():
        raise ValueError(
            f"estimator {name!r} returned negative values at frame {frame} (min {float(x.min()):.4g}); images must be >= 0"
        )
    return x.to(model.device, torch.float32)


def check_masks(masks: dict[str, torch.Tensor], model: AcquisitionModel) -> dict[str, torch.Tensor]:
    if not masks:
        raise ValueError("no ROI masks given")
    out = {}
    sens = model.sensitivity().cpu()
    for name, m in masks.items():
        m = torch.as_tensor(m)
        if tuple(m.shape) != tuple(model.image_shape):
            raise ValueError(f"ROI {name!r} has shape {tuple(m.shape)}, the image is {model.image_shape}")
        m = m.bool()
        if not m.any():
            raise ValueError(f"ROI {name!r} is empty")
        if (sens[m] <= 0).any():
            raise ValueError(f"ROI {name!r} reaches outside the field of view (voxels with zero sensitivity)")
        out[name] = m
    return out


def sequential_thresholds(
    model: AcquisitionModel,
    frames: Frames,
    estimators: dict[str, Estimator],
    alpha: float,
    initial: torch.Tensor | None = None,
) -> dict:
    """The mixture log-likelihoods and thresholds per estimator and frame.

    Returns ``{"first_frame": s0 (1-based), "mix": {name: [F - s0 + 1]}, "threshold": {...},
    "estimates": {name: [x_hat_{t-1} per evaluated frame]}}``; thresholds in the units of
    :func:`~petuq_sirf.confidence.roi_solver.log_likelihood` on the counts of frames ``s0..t`` with ``T = sum tau``.
    """
    alpha = check_alpha(alpha)
    dev = model.device
    first = 1 if initial is not None else 2
    if frames.num_frames < first:
        raise ValueError("with a burn-in first frame at least 2 frames are needed")
    if initial is not None:
        initial = check_estimate(initial, model, "initial guess", 1)
    out = {"first_frame": first, "mix": {}, "threshold": {}, "estimates": {}}
    cum = torch.cumsum(frames.counts.double(), 0)
    share = torch.cumsum(frames.fractions, 0)
    for name, est in estimators.items():
        total = 0.0
        mix, thr, xs = [], [], []
        for t in range(first, frames.num_frames + 1):
            if t == 1:
                x_hat = initial
            else:
                with torch.no_grad():
                    x_hat = est(past_model(model, float(share[t - 2])), cum[t - 2].float().to(dev))
                x_hat = check_estimate(x_hat, model, name, t)
            total += float(
                frame_log_likelihood(model, frames.counts[t - 1].to(dev), float(frames.fractions[t - 1]), x_hat)
            )
            mix.append(total)
            thr.append(total - math.log(1.0 / alpha))
            xs.append(x_hat.cpu())
        out["mix"][name], out["threshold"][name], out["estimates"][name] = mix, thr, xs
    return out


@dataclass
class ConfidenceResult:
    """ROI intervals per estimator, ROI and evaluated frame (lists of length ``F - first_frame + 1``).

    ``intervals[est][roi]`` has ``lower``, ``upper`` (the set ``C_t``), ``running_lower``,
    ``running_upper`` (the running intersection; never widens), ``width``, ``running_width`` and solver
    diagnostics; ``frame_end_s`` the scan time at the end of each evaluated frame.
    """

    alpha: float
    first_frame: int
    frame_end_s: list[float]
    counts: list[float]
    thresholds: dict[str, list[float]]
    mixture: dict[str, list[float]]
    ml_log_likelihood: list[float]
    intervals: dict[str, dict[str, dict[str, list]]]
    truth_in_set: dict[str, list[bool]] | None = None
    truth_roi: dict[str, float] | None = None
    estimates: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "alpha": self.alpha,
            "first_frame": self.first_frame,
            "frame_end_s": self.frame_end_s,
            "counts": self.counts,
            "thresholds": self.thresholds,
            "mixture_log_likelihood": self.mixture,
            "ml_log_likelihood": self.ml_log_likelihood,
            "intervals": self.intervals,
        }
        if self.truth_in_set is not None:
            d["truth_in_set"] = self.truth_in_set
        if self.truth_roi is not None:
            d["truth_roi_mean"] = self.truth_roi
        return d


def running_interval(lower: Sequence[float], upper: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(max_{s<=t} lower_s, min_{s<=t} upper_s)`` per ``t``."""
    lo = np.maximum.accumulate(np.asarray(lower, dtype=np.float64)).tolist()
    hi = np.minimum.accumulate(np.asarray(upper, dtype=np.float64)).tolist()
    return lo, hi


def check_relative_target(target: float, name: str = "target relative width") -> float:
    """``target`` (width / midpoint) if in (0, 2], else a one-line ``ValueError``: width / midpoint of a
    non-negative interval is at most 2 (2 exactly when its lower bound is 0), so a larger target is always met."""
    if not 0 < target <= 2:
        raise ValueError(
            f"{name} must be in (0, 2]: width / midpoint of a non-negative interval is at most 2, got {target}"
        )
    return float(target)


def scan_time_needed(
    result: ConfidenceResult, estimator: str, roi: str, target_width: float, relative: bool = False
) -> float | None:
    """End time (s) of the first frame after which the running interval is narrower than ``target_width``
    (absolute, image units; or ``width / midpoint`` when ``relative``); None if never.

    A relative target must be at most 2: an interval with a lower bound of 0 has ``width / midpoint`` = 2
    (any non-negative interval at most 2), so a target above 2 would be met by every interval at once.
    """
    if not target_width > 0:
        raise ValueError(f"target width must be > 0, got {target_width}")
    if relative:
        check_relative_target(target_width)
    iv = result.intervals[estimator][roi]
    for t, (lo, hi) in enumerate(zip(iv["running_lower"], iv["running_upper"])):
        width = hi - lo
        if relative:
            mid = 0.5 * (hi + lo)
            width = width / mid if mid > 0 else math.inf
        if width < target_width:
            return result.frame_end_s[t]
    return None


def batch_intervals(
    model: AcquisitionModel,
    realisations: Sequence[Frames],
    estimators: dict[str, Estimator],
    masks: dict[str, torch.Tensor],
    alpha: float = 0.1,
    initial: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
    config: SolverConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """:func:`confidence_intervals` for ``P`` independent realisations of the same acquisition, solved together.

    Returns numpy arrays: ``lower``, ``upper``, ``running_lower``, ``running_upper``, ``lower_primal``,
    ``upper_primal``, ``constraint``, ``kkt_stationarity``, ``kkt_dual_infeasibility``, ``empty``
    ``(P, estimators, ROIs, frames)``; ``threshold``, ``mixture`` ``(P, estimators, frames)``;
    ``truth_in_set`` ``(P, estimators, frames)`` when ``truth`` is given; ``ml_roi`` ``(P, ROIs, frames)``,
    ``multipliers`` ``(P, ROIs, frames)``, ``counts`` ``(P, frames)``; plus ``first_frame``,
    ``frame_end_s``, ``estimators``, ``rois``, ``truth_roi``.
    """
    alpha = check_alpha(alpha)
    masks = check_masks(masks, model)
    if not estimators:
        raise ValueError("no estimator given")
    if not realisations:
        raise ValueError("no data")
    dev = model.device
    names, roi_names = list(estimators), list(masks)
    thr = [sequential_thresholds(model, fr, estimators, alpha, initial) for fr in realisations]
    first = thr[0]["first_frame"]
    n_f = realisations[0].num_frames
    if any(fr.num_frames != n_f for fr in realisations):
        raise ValueError("all realisations need the same frames")
    f_eval = n_f - first + 1
    p, n_e, n_r = len(realisations), len(names), len(roi_names)
    w = roi_weights(torch.stack([masks[k] for k in roi_names]).to(dev))
    keys = (
        "lower",
        "upper",
        "lower_primal",
        "upper_primal",
        "constraint",
        "kkt_stationarity",
        "kkt_dual_infeasibility",
    )
    out = {k: np.zeros((p, n_e, n_r, f_eval)) for k in keys}
    out["empty"] = np.zeros((p, n_e, n_r, f_eval), dtype=bool)
    out["threshold"] = np.array([[t["threshold"][n] for n in names] for t in thr])
    out["mixture"] = np.array([[t["mix"][n] for n in names] for t in thr])
    out["ml_roi"] = np.zeros((p, n_r, f_eval))
    out["ml_log_likelihood"] = np.zeros((p, f_eval))
    out["multipliers"] = np.zeros((p, n_r, f_eval), dtype=np.int64)
    out["counts"] = np.zeros((p, f_eval))
    if truth is not None:
        out["truth_in_set"] = np.zeros((p, n_e, f_eval), dtype=bool)
    ml_start = None
    for k in range(f_eval):
        t = first + k
        y_cum = torch.stack([fr.counts[first - 1 : t].double().sum(0).float() for fr in realisations]).to(dev)
        share = torch.tensor([float(fr.fractions[first - 1 : t].sum()) for fr in realisations], dtype=torch.float64)
        c = torch.as_tensor(out["threshold"][:, :, k], dtype=torch.float64)
        res = roi_bounds(model, y_cum, share, w, c, config, ml_start=ml_start)
        ml_start = res.ml_image  # warm start of the next frame's ML solve
        # res arrays are (P, R, C) with C = estimators
        for key, val in (
            ("lower", res.lower),
            ("upper", res.upper),
            ("lower_primal", res.lower_primal),
            ("upper_primal", res.upper_primal),
            ("kkt_stationarity", res.kkt_stationarity),
            ("kkt_dual_infeasibility", res.kkt_dual_infeasibility),
            ("empty", res.empty),
        ):
            out[key][:, :, :, k] = val.permute(0, 2, 1).cpu().numpy()
        con = torch.maximum(res.constraint_lower.abs(), res.constraint_upper.abs())
        out["constraint"][:, :, :, k] = con.permute(0, 2, 1).cpu().numpy()
        out["ml_roi"][:, :, k] = res.ml_roi.cpu().numpy()
        out["ml_log_likelihood"][:, k] = res.ml_log_likelihood.cpu().numpy()
        out["multipliers"][:, :, k] = res.steps.cpu().numpy()
        out["counts"][:, k] = y_cum.double().sum(dim=(-3, -2, -1)).cpu().numpy()
        if truth is not None:
            l_true = poisson_log_likelihood(
                y_cum.double(), model.forward(truth.to(dev)).double().unsqueeze(0), share.to(dev).reshape(-1, 1, 1, 1)
            )
            out["truth_in_set"][:, :, k] = l_true.cpu().numpy()[:, None] >= out["threshold"][:, :, k]
        if progress is not None:
            progress(f"frame {t}/{n_f}: {out['counts'][:, k].mean():.0f} counts")
    out["running_lower"] = np.maximum.accumulate(out["lower"], axis=-1)
    out["running_upper"] = np.minimum.accumulate(out["upper"], axis=-1)
    out["first_frame"] = first
    out["frame_end_s"] = [float(realisations[0].edges_s[first + k]) for k in range(f_eval)]
    out["estimators"], out["rois"] = names, roi_names
    out["truth_roi"] = (
        {r: float(truth.cpu()[masks[r].cpu()].double().mean()) for r in roi_names} if truth is not None else None
    )
    out["estimates"] = [t["estimates"] for t in thr]
    return out


def confidence_intervals(
    model: AcquisitionModel,
    frames: Frames,
    estimators: dict[str, Estimator],
    masks: dict[str, torch.Tensor],
    alpha: float = 0.1,
    initial: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
    config: SolverConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> ConfidenceResult:
    """Anytime-valid ROI-mean intervals (sequential likelihood mixing) for every estimator and frame.

    ``masks``: boolean ROI masks ``image_shape``; ``initial``: a data-free first guess (else frame 1 is a
    burn-in); ``truth`` (simulations): also reports whether it lies in each set and its ROI means.
    """
    b = batch_intervals(model, [frames], estimators, masks, alpha, initial, truth, config, progress)
    names, rois = b["estimators"], b["rois"]
    per: dict = {}
    for j, n in enumerate(names):
        per[n] = {}
        for i, r in enumerate(rois):
            d = {k: b[k][0, j, i].tolist() for k in _KEYS}
            d["width"] = (b["upper"][0, j, i] - b["lower"][0, j, i]).tolist()
            d["running_width"] = (b["running_upper"][0, j, i] - b["running_lower"][0, j, i]).tolist()
            d["duality_gap"] = (
                (b["lower_primal"][0, j, i] - b["lower"][0, j, i]) + (b["upper"][0, j, i] - b["upper_primal"][0, j, i])
            ).tolist()
            d["ml_roi_mean"] = b["ml_roi"][0, i].tolist()
            d["multipliers"] = b["multipliers"][0, i].tolist()
            per[n][r] = d
    return ConfidenceResult(
        alpha=alpha,
        first_frame=b["first_frame"],
        frame_end_s=b["frame_end_s"],
        counts=b["counts"][0].tolist(),
        thresholds={n: b["threshold"][0, j].tolist() for j, n in enumerate(names)},
        mixture={n: b["mixture"][0, j].tolist() for j, n in enumerate(names)},
        ml_log_likelihood=b["ml_log_likelihood"][0].tolist(),
        intervals=per,
        truth_in_set={n: b["truth_in_set"][0, j].tolist() for j, n in enumerate(names)} if truth is not None else None,
        truth_roi=b["truth_roi"],
        estimates=b["estimates"][0],
    )


_KEYS = (
    "lower",
    "upper",
    "running_lower",
    "running_upper",
    "lower_primal",
    "upper_primal",
    "constraint",
    "kkt_stationarity",
    "kkt_dual_infeasibility",
    "empty",
)


# ----------------------------------------------------------------------------------------- prior mixing
def split_events_counts(
    counts: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binomial thinning of counts into two independent Poisson splits ``(fit, eval)`` with means
    ``fraction`` and ``1 - fraction`` of the original (the same as assigning each event at random)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    fit = torch.binomial(counts.double(), torch.full_like(counts.double(), fraction), generator=generator).float()
    return fit, counts - fit


def prior_mixing_threshold(
    model: AcquisitionModel, y_eval: torch.Tensor, tau_eval: float, samples: torch.Tensor, alpha: float
) -> float:
    """``log mean_k exp l_B(x_k) - log(1/alpha)`` for draws ``samples`` ``(K, *image)`` independent of ``y_eval``.

    ``{x >= 0 : l_B(x) >= threshold}`` (with ``l_B`` the log-likelihood of ``y_eval`` at mean
    ``tau_eval * ybar``) covers the true image with probability >= 1 - alpha over the evaluation
    split's Poisson noise, conditionally on whatever produced the draws.
    """
    alpha = check_alpha(alpha)
    if samples.dim() == 3:
        samples = samples.unsqueeze(0)
    for k in range(samples.shape[0]):
        check_estimate(samples[k], model, "posterior draw", k + 1)
    ll = poisson_log_likelihood(y_eval.double(), model.forward(samples.to(model.device)).double(), float(tau_eval))
    lme = torch.logsumexp(ll, 0) - math.log(samples.shape[0])
    return float(lme) - math.log(1.0 / alpha)
