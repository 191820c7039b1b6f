"""Bounds of an ROI mean over a super-level set of the Poisson log-likelihood (a convex program).

For counts ``Y`` with mean ``T * ybar(x)``, ``ybar(x) = m * G x + b`` (any
:class:`~petuq_sirf.operators.acquisition.AcquisitionModel`), and the log-likelihood
``L(x) = sum(Y log ybar - T ybar)`` (:func:`~petuq_sirf.recon.likelihood.poisson_log_likelihood`
with ``expected_scale = T``), this module solves, for ROI weights ``w`` (the ROI mean
``<w, x>``, ``w = mask / |mask|``) and a threshold ``c``::

    upper = max <w, x>  s.t.  L(x) >= c, x >= 0        lower = min <w, x>  s.t.  L(x) >= c, x >= 0

Both are convex (``L`` is concave). Lagrangian method: for a multiplier ``eta > 0`` (``eta = 1/lambda``)
the inner problem ``max_{x >= 0} L(x) +/- eta <w, x>`` is a Poisson likelihood with the modified
sensitivity ``s' = T G^T m -/+ eta w``, solved by EM-preconditioned projected gradient ascent with an
adaptive step (a plain EM step, which is monotone for any ``s' > 0``, is the fallback), using only
``forward`` and ``adjoint``. The outer search walks ``eta`` up a geometric grid from the ML image
(every inner solve starts from a linear extrapolation of the last two solutions, a predictor-corrector
path following) until ``L(x_eta)`` has fallen below every
threshold, so one path serves all thresholds ``c`` (estimators, frames' alphas) at once.

Every visited multiplier gives a value of the dual function, ``<w, x_eta> + (L(x_eta) - c) / eta``
(upper) or ``<w, x_eta> - (L(x_eta) - c) / eta`` (lower); the reported bound is the best of them
(the multiplier with ``L(x_eta)`` closest to ``c``; the grid ratio ``r`` costs at most about
``(log r)^2 / 8`` of the half-width). The primal bound is the ROI value of the best feasible point
(an iterate with ``L >= c``, or the point on its segment to the ML image where ``L >= c`` by
concavity), and the duality gap is their difference. Exact when the inner problems are solved
exactly; the KKT residuals of the inner solve at the best multiplier are reported.

Everything is batched: ``P`` count vectors (problems) x ``R`` ROIs x 2 sides are solved together
through one batched projector call per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.recon.likelihood import poisson_gradient_ratio, poisson_log_likelihood

_TINY = 1e-12
_REVIVE = 1e-3  # level (relative to the mean image) of revived zero voxels


@dataclass(frozen=True)
class SolverConfig:
    """Iteration budgets and the multiplier grid.

    Attributes:
        ml_iterations: accelerated EM iterations for the maximum-likelihood image (``eta = 0``).
        inner_iterations: iterations of each inner (fixed-``eta``) solve, warm-started along the path.
        grid_ratio: ratio of consecutive multipliers once the path is near the thresholds.
        coarse_ratio: ratio while no threshold ahead is within ``coarse_ratio**2.5`` of ``L_ML - L(x_eta)``
            (the drop grows about like ``eta**2``), e.g. far below the first or between far-apart thresholds.
        max_steps: the most multipliers per path.
        max_step: the largest step (in units of the EM step) of the accelerated ascent.
        stationarity_tolerance: inner solves whose relative KKT stationarity is above this get up to
            ``extra_rounds`` more rounds of ``inner_iterations``.
        accept_stationarity: dual values of inner solves whose relative stationarity is still above this
            after the extra rounds are not used as bounds (they may be too narrow); a bound with no
            accepted multiplier stays infinite (lower: 0).
    """

    ml_iterations: int = 200
    inner_iterations: int = 15
    grid_ratio: float = 1.25
    coarse_ratio: float = 2.0
    max_steps: int = 40
    max_step: float = 8.0
    stationarity_tolerance: float = 1e-4
    extra_rounds: int = 3
    accept_stationarity: float = 1e-2

    def __post_init__(self) -> None:
        if min(self.ml_iterations, self.inner_iterations, self.max_steps) < 1:
            raise ValueError("solver iteration counts must be >= 1")
        if self.grid_ratio <= 1 or self.coarse_ratio < self.grid_ratio or self.max_step < 1:
            raise ValueError("solver grid ratios must be > 1 (coarse >= fine) and max_step >= 1")


@dataclass
class RoiBounds:
    """Bounds of ROI means; arrays ``(P, R, C)`` (problems, ROIs, thresholds) unless noted.

    ``lower``/``upper``: the dual-function bounds (the reported interval). ``lower_primal``/``upper_primal``:
    ROI means of feasible points (an inner estimate of the range). ``gap_*``: bound minus primal
    (>= 0 up to solver accuracy). ``constraint_*``: ``L(x_eta) - c`` at the best multiplier (nats;
    the complementary-slackness residual, limited by the grid). ``kkt_*``: the inner solve's relative
    stationarity ``sum x |grad| / sum x s'`` and dual infeasibility ``max (G^T m (Y / ybar) / s' - 1)_+``
    at the best multiplier (max of both sides). ``empty``: ``c`` above the maximum likelihood (the set
    is empty up to the ML solver's accuracy; the interval collapses to the ML ROI mean).
    ``ml_log_likelihood`` ``(P,)``, ``ml_roi`` ``(P, R)``, ``ml_image`` ``(P, *image)``;
    ``steps`` ``(P, R)`` multipliers visited (max of both sides).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    lower_primal: torch.Tensor
    upper_primal: torch.Tensor
    constraint_lower: torch.Tensor
    constraint_upper: torch.Tensor
    kkt_stationarity: torch.Tensor
    kkt_dual_infeasibility: torch.Tensor
    steps: torch.Tensor
    empty: torch.Tensor
    ml_log_likelihood: torch.Tensor
    ml_roi: torch.Tensor
    ml_image: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def gap_lower(self) -> torch.Tensor:
        return self.lower_primal - self.lower

    @property
    def gap_upper(self) -> torch.Tensor:
        return self.upper - self.upper_primal


def log_likelihood(model: AcquisitionModel, counts: torch.Tensor, scale, x: torch.Tensor) -> torch.Tensor:
    """``L(x) = sum(Y log ybar(x) - T ybar(x))`` in float64, batched over leading dims of ``x``/``counts``."""
    return _loglik(counts, model.forward(x), scale)


def _loglik(counts: torch.Tensor, ybar: torch.Tensor, scale) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        scale = scale.double()
        if scale.dim() >= 1:
            scale = _bcast(scale)
    return poisson_log_likelihood(counts.double(), ybar.double(), scale)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() * b.double()).sum(dim=(-3, -2, -1))


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(*v.shape, 1, 1, 1)


def ascend(
    model: AcquisitionModel,
    counts: torch.Tensor,
    scale: torch.Tensor,
    linear: torch.Tensor,
    x: torch.Tensor,
    iterations: int,
    step: torch.Tensor | None = None,
    max_step: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximise ``L(x) + <linear, x>`` over ``x >= 0`` for a batch ``(E, *image)``.

    ``scale`` ``(E,)`` is ``T`` per element, ``counts`` ``(E, *data)``. Needs
    ``s' = T G^T m - linear > 0`` wherever ``linear > 0`` (else the problem is unbounded).
    EM-preconditioned projected gradient ascent: ``x + step * x / s' * grad``, projected onto
    ``x >= 0``; the step grows by 1.5 after every accepted iterate (up to ``max_step``), and an
    iterate that does not increase the objective is replaced by the plain EM step (``step = 1``,
    monotone for any ``s' > 0``). (Nesterov momentum with restarts was tried: no faster per CPU
    second here.) Returns ``(x, objective, step)``.
    """
    sens = model.sensitivity()
    denom = _bcast(scale).to(sens.dtype) * sens - linear
    support = denom > 0
    denom_safe = denom.clamp_min(_TINY)
    step = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if step is None else step.clone()
    x = torch.where(support, x, torch.zeros_like(x))
    ybar = model.forward(x)
    obj = _loglik(counts, ybar, scale) + _dot(linear, x)
    # multiplicative (EM) steps cannot move a voxel that is exactly 0; voxels at 0 whose gradient is
    # positive (they should grow: a KKT violation) are revived to a small level first
    n_sup = support.sum(dim=(-3, -2, -1), keepdim=True).clamp_min(1)
    for _ in range(iterations):
        back = model.adjoint(poisson_gradient_ratio(counts, ybar))
        revive = support & (x <= 0) & (back > denom)
        x_em = torch.where(support, x * back / denom_safe, torch.zeros_like(x))
        if revive.any():
            level = x.sum(dim=(-3, -2, -1), keepdim=True) / n_sup
            x_em = torch.where(revive, (_REVIVE * level).expand_as(x), x_em)
        cand = (x + _bcast(step) * (x_em - x)).clamp_min(0)
        ybar_c = model.forward(cand)
        obj_c = _loglik(counts, ybar_c, scale) + _dot(linear, cand)
        ok = obj_c >= obj
        bad = ~ok & (step > 1)
        if bad.any():
            idx = bad.nonzero().squeeze(1)
            cand[idx] = x_em[idx]
            ybar_c[idx] = model.forward(x_em[idx])
            obj_c[idx] = _loglik(counts[idx], ybar_c[idx], scale[idx]) + _dot(linear[idx], x_em[idx])
        x, ybar, obj = cand, ybar_c, obj_c
        step = torch.where(ok, (step * 1.5).clamp(max=max_step), torch.ones_like(step))
    return x, obj, step


def kkt_residuals(
    model: AcquisitionModel, counts: torch.Tensor, scale: torch.Tensor, linear: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stationarity, dual_infeasibility)`` of ``max_{x>=0} L(x) + <linear, x>`` at ``x``, per element.

    Stationarity ``sum_j x_j |g_j| / sum_j x_j s'_j`` (``g`` the gradient, ``s'`` the modified
    sensitivity); dual infeasibility ``max_j (g_j / s'_j)_+`` over the support. Both 0 at the optimum.
    """
    sens = model.sensitivity()
    denom = _bcast(scale).to(sens.dtype) * sens - linear
    support = denom > 0
    back = model.adjoint(poisson_gradient_ratio(counts, model.forward(x)))
    grad = torch.where(support, back - denom, torch.zeros_like(x))
    num = (x * grad.abs()).double().sum(dim=(-3, -2, -1))
    den = (x * denom.clamp_min(0)).double().sum(dim=(-3, -2, -1)).clamp_min(_TINY)
    rel = torch.where(support, grad / denom.clamp_min(_TINY), torch.zeros_like(x))
    return num / den, rel.clamp_min(0).amax(dim=(-3, -2, -1)).double()


def maximum_likelihood(
    model: AcquisitionModel,
    counts: torch.Tensor,
    scale: torch.Tensor | float,
    x0: torch.Tensor | None = None,
    iterations: int = 300,
    max_step: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ML image of ``counts`` ``(P, *data)`` under mean ``T ybar(x)``: ``(x (P, *image), L (P,))``."""
    p = counts.shape[0]
    scale_t = torch.as_tensor(scale, dtype=torch.float64, device=counts.device).expand(p).clone()
    if x0 is None:
        sens = model.sensitivity()
        level = counts.double().sum(dim=(-3, -2, -1)) / (scale_t * sens.double().sum()).clamp_min(_TINY)
        x0 = torch.where(sens > 0, torch.ones_like(sens), torch.zeros_like(sens)) * _bcast(level).to(sens.dtype)
    linear = torch.zeros((p, *model.image_shape), dtype=counts.dtype, device=counts.device)
    x, obj, _ = ascend(model, counts, scale_t, linear, x0.clone(), iterations, max_step=max_step)
    return x, obj


def roi_weights(masks: torch.Tensor) -> torch.Tensor:
    """ROI-mean weights ``mask / |mask|``, ``(R, *image)``."""
    m = masks.double()
    n = m.sum(dim=(-3, -2, -1))
    if (n == 0).any():
        raise ValueError("an ROI mask is empty")
    return (m / _bcast(n)).float()


def roi_bounds(
    model: AcquisitionModel,
    counts: torch.Tensor,
    scale: float | torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor,
    config: SolverConfig | None = None,
    ml_start: torch.Tensor | None = None,
) -> RoiBounds:
    """Bounds of ``<w_r, x>`` over ``{x >= 0 : L(x) >= c}`` for every problem, ROI and threshold.

    Args:
        counts: ``(P, *data_shape)`` counts (``P`` problems sharing the model's terms).
        scale: ``T`` (scalar or ``(P,)``): the counts' mean is ``T * ybar(x)``.
        weights: ``(R, *image_shape)`` non-negative ROI weights (the ROI mean for ``mask / |mask|``);
            every weighted voxel must have positive sensitivity.
        thresholds: ``(P, C)`` values of ``c`` (nats, same constant convention as :func:`log_likelihood`).
        ml_start: ``(P, *image)`` start of the ML solve (e.g. the previous frame's ML image).
    """
    config = config or SolverConfig()
    dev = model.device
    counts = counts.to(dev)
    if counts.dim() == 3:
        counts = counts.unsqueeze(0)
    p = counts.shape[0]
    weights = weights.to(dev, counts.dtype)
    if weights.dim() == 3:
        weights = weights.unsqueeze(0)
    r = weights.shape[0]
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64, device=dev)
    if thresholds.dim() == 1:
        thresholds = thresholds.reshape(p, -1)
    if thresholds.shape[0] != p:
        raise ValueError(f"thresholds have shape {tuple(thresholds.shape)}, expected ({p}, C)")
    if not torch.isfinite(thresholds).all():
        raise ValueError("thresholds must be finite")
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("ROI weights must be finite and >= 0")
    sens = model.sensitivity().to(counts.dtype)
    if ((weights > 0) & (sens.unsqueeze(0) <= 0)).any():
        raise ValueError("an ROI contains voxels outside the field of view (zero sensitivity): unbounded")
    scale_p = torch.as_tensor(scale, dtype=torch.float64, device=dev).expand(p).clone()
    if not (scale_p > 0).all():
        raise ValueError("the count scale T must be > 0")

    # --- maximum likelihood per problem (eta = 0)
    x_ml, l_ml = maximum_likelihood(model, counts, scale_p, ml_start, config.ml_iterations, config.max_step)
    roi_ml = torch.einsum("p...,r...->pr", x_ml.double(), weights.double())

    # --- path elements (p, r, side); side 0 = lower (linear = -eta w), 1 = upper (+eta w)
    shape = (p, r, 2)
    grids = torch.meshgrid(*(torch.arange(n, device=dev) for n in shape), indexing="ij")
    pi, ri, si = (g.reshape(-1) for g in grids)
    e_n = pi.numel()
    sign = (2 * si - 1).double()
    w_e, y_e, t_e = weights[ri], counts[pi], scale_p[pi]
    c_e = thresholds[pi]  # (E, C)
    lref = l_ml[pi]
    roi_ml_e = roi_ml[pi, ri]
    empty = c_e >= lref.unsqueeze(1)
    drop_needed = (lref.unsqueeze(1) - c_e).clamp_min(0)  # (E, C)
    drop_max = drop_needed.amax(1)
    wdotw = (weights.double() ** 2).sum(dim=(-3, -2, -1))
    eta_ref = t_e * _dot(weights, sens.unsqueeze(0))[ri] / wdotw[ri]
    ratio_w = torch.where(weights > 0, sens.unsqueeze(0) / weights.clamp_min(_TINY), torch.full_like(weights, math.inf))
    eta_max = t_e * ratio_w.amin(dim=(-3, -2, -1)).double()[ri]
    eta_cap = torch.where(sign > 0, eta_max * (1 - 1e-4), eta_ref * 1e6)

    n_c = c_e.shape[1]
    best = (sign.unsqueeze(1) * math.inf).expand(e_n, n_c).clone()
    primal = roi_ml_e.unsqueeze(1).expand(e_n, n_c).clone()
    constraint = torch.full((e_n, n_c), math.nan, dtype=torch.float64, device=dev)
    kkt_s = torch.zeros((e_n, n_c), dtype=torch.float64, device=dev)
    kkt_d = torch.zeros_like(kkt_s)
    steps = torch.zeros(e_n, dtype=torch.long, device=dev)

    x = x_ml[pi].clone()
    x_prev = x.clone()
    step = torch.ones(e_n, dtype=counts.dtype, device=dev)
    eta = (eta_ref * 1e-3).clamp(max=eta_cap * 0.5)
    eta_prev = torch.zeros_like(eta)
    eta_prev2 = torch.zeros_like(eta)
    active = (~empty).any(1)
    for _ in range(config.max_steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        lin = (sign[idx] * eta[idx]).to(counts.dtype).reshape(-1, 1, 1, 1) * w_e[idx]
        # predictor: extrapolate the path linearly in eta from the last two solutions
        frac = _bcast(((eta[idx] - eta_prev[idx]) / (eta_prev[idx] - eta_prev2[idx]).clamp_min(_TINY)).clamp(0, 2))
        have = _bcast((steps[idx] >= 2).to(counts.dtype))
        start = (x[idx] + have * frac.to(counts.dtype) * (x[idx] - x_prev[idx])).clamp_min(0)
        x_prev[idx] = x[idx]
        xi, obj, st = ascend(model, y_e[idx], t_e[idx], lin, start, config.inner_iterations, step[idx], config.max_step)
        ks, kd = kkt_residuals(model, y_e[idx], t_e[idx], lin, xi)
        for _ in range(config.extra_rounds):  # corrector: more iterations where not yet stationary
            more = (ks > config.stationarity_tolerance).nonzero().squeeze(1)
            if more.numel() == 0:
                break
            sub = idx[more]
            xm, om, sm = ascend(
                model, y_e[sub], t_e[sub], lin[more], xi[more], config.inner_iterations, st[more], config.max_step
            )
            xi[more], obj[more], st[more] = xm, om, sm
            ks[more], kd[more] = kkt_residuals(model, y_e[sub], t_e[sub], lin[more], xm)
        x[idx], step[idx] = xi, st
        steps[idx] += 1
        roi = _dot(w_e[idx], xi)
        ll = obj - sign[idx] * eta[idx] * roi
        # dual values for every threshold; keep the best
        s = sign[idx].unsqueeze(1)
        cc = c_e[idx]
        dual = roi.unsqueeze(1) + s * (ll.unsqueeze(1) - cc) / eta[idx].unsqueeze(1)
        improved = torch.where(s > 0, dual < best[idx], dual > best[idx])
        # a dual value bounds the optimum only if the inner problem is solved: never take one from an
        # inner solve that is far from stationary (if none qualifies the bound stays infinite)
        improved &= (ks <= config.accept_stationarity).unsqueeze(1)
        best[idx] = torch.where(improved, dual, best[idx])
        constraint[idx] = torch.where(improved, ll.unsqueeze(1) - cc, constraint[idx])
        kkt_s[idx] = torch.where(improved, ks.unsqueeze(1), kkt_s[idx])
        kkt_d[idx] = torch.where(improved, kd.unsqueeze(1), kkt_d[idx])
        # primal: the iterate if feasible, else the feasible point on its segment to the ML image
        theta = ((lref[idx].unsqueeze(1) - cc) / (lref[idx] - ll).clamp_min(_TINY).unsqueeze(1)).clamp(0.0, 1.0)
        feas = ll.unsqueeze(1) >= cc
        cand = torch.where(
            feas, roi.unsqueeze(1), roi_ml_e[idx].unsqueeze(1) + theta * (roi - roi_ml_e[idx]).unsqueeze(1)
        )
        primal[idx] = torch.where(s > 0, torch.maximum(primal[idx], cand), torch.minimum(primal[idx], cand))
        # next multiplier
        drop = lref[idx] - ll
        # fine steps only while a threshold still ahead is within reach of a coarse step (the drop grows
        # about like eta^2 near the ML image, faster near eta_max); coarse elsewhere, e.g. between the
        # thresholds of a good and a bad estimator
        need = torch.where(empty[idx], torch.full_like(drop_needed[idx], math.inf), drop_needed[idx])
        ahead = need >= drop.unsqueeze(1)
        near_c = (ahead & (drop.unsqueeze(1) >= need / config.coarse_ratio**2.5)).any(1)
        ratio = torch.where(near_c, config.grid_ratio, config.coarse_ratio)
        done = (drop > 1.05 * drop_max[idx] + 0.1) | (eta[idx] >= eta_cap[idx] * (1 - 1e-9))
        # lower side: once the ROI is emptied (eta beyond the largest T s_j / w_j) the drop saturates and
        # the minimum is 0 for every threshold the iterate satisfies; larger multipliers change nothing
        done |= (sign[idx] < 0) & (roi <= 1e-4 * roi_ml_e[idx].clamp_min(_TINY))
        # geometric in eta, and (upper side) geometric in the distance to eta_max, where the ROI blows up
        nxt = eta[idx] * ratio
        near = eta_max[idx] - (eta_max[idx] - eta[idx]) / ratio
        nxt = torch.where(sign[idx] > 0, torch.minimum(nxt, near), nxt)
        eta_prev2[idx] = eta_prev[idx]
        eta_prev[idx] = eta[idx]
        eta[idx] = torch.minimum(nxt, eta_cap[idx])
        active[idx] = ~done

    best = torch.where(empty, roi_ml_e.unsqueeze(1), best)
    primal = torch.where(empty, roi_ml_e.unsqueeze(1), primal)
    lower_side = (sign < 0).unsqueeze(1)
    best = torch.where(lower_side, best.clamp_min(0.0), best)

    def side(v: torch.Tensor, k: int) -> torch.Tensor:
        return v.reshape(*shape, *v.shape[1:])[:, :, k]

    return RoiBounds(
        lower=side(best, 0),
        upper=side(best, 1),
        lower_primal=side(primal, 0),
        upper_primal=side(primal, 1),
        constraint_lower=side(constraint, 0),
        constraint_upper=side(constraint, 1),
        kkt_stationarity=torch.maximum(side(kkt_s, 0), side(kkt_s, 1)),
        kkt_dual_infeasibility=torch.maximum(side(kkt_d, 0), side(kkt_d, 1)),
        steps=torch.maximum(side(steps, 0), side(steps, 1)),
        empty=side(empty, 0),
        ml_log_likelihood=l_ml,
        ml_roi=roi_ml,
        ml_image=x_ml,
        info={"config": config.__dict__.copy()},
    )
