"""Confidence sets by sequential likelihood mixing: solver against brute force, coverage, anytime, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from petuq_sirf.confidence.estimators import constant_estimator
from petuq_sirf.confidence.roi_solver import SolverConfig, ascend, kkt_residuals, log_likelihood, roi_bounds
from petuq_sirf.confidence.sets import (
    Frames,
    batch_intervals,
    check_alpha,
    confidence_intervals,
    frame_counts,
    frame_listmode,
    prior_mixing_threshold,
    scan_time_needed,
    sequential_thresholds,
    split_events_counts,
)
from petuq_sirf.recon.em import mlem
from tests.confidence.dense_model import DenseAcquisitionModel


def _two_pixel_problem():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(6, 2, generator=gen)
    model = DenseAcquisitionModel(a, additive=torch.full((1, 1, 6), 2.0))
    truth = torch.tensor([3.0, 5.0]).reshape(1, 1, 2)
    y = torch.poisson(model.forward(truth), generator=gen)
    return model, truth, y


def _brute_force(model, y, weights, c, hi=20.0, n=1201):
    g = torch.linspace(0, hi, n, dtype=torch.float64)
    x1, x2 = torch.meshgrid(g, g, indexing="ij")
    x = torch.stack([x1, x2], -1).reshape(-1, 1, 1, 2)
    ll = torch.cat([log_likelihood(model, y, 1.0, x[i : i + 400_000].float()) for i in range(0, len(x), 400_000)])
    feas = ll >= c
    vals = (x.reshape(-1, 2) * weights.reshape(2).double()).sum(-1)[feas]
    return float(vals.min()), float(vals.max())


def test_solver_matches_brute_force_and_kkt():
    model, truth, y = _two_pixel_problem()
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).reshape(2, 1, 1, 2)
    l_true = float(log_likelihood(model, y, 1.0, truth))
    c = torch.tensor([[l_true - 3.0, l_true - 0.5]], dtype=torch.float64)
    res = roi_bounds(model, y.unsqueeze(0), 1.0, w, c, SolverConfig(inner_iterations=30, grid_ratio=1.1))
    step = 20.0 / 1200
    for r in range(2):
        for j in range(2):
            lo, hi = _brute_force(model, y, w[r], float(c[0, j]))
            assert abs(float(res.lower[0, r, j]) - lo) < 0.02 * (hi - lo) + step
            assert abs(float(res.upper[0, r, j]) - hi) < 0.02 * (hi - lo) + step
            # primal (feasible) bounds lie inside the dual ones, with a small gap
            assert float(res.lower_primal[0, r, j]) >= float(res.lower[0, r, j]) - 1e-6
            assert float(res.upper_primal[0, r, j]) <= float(res.upper[0, r, j]) + 1e-6
            assert float(res.gap_upper[0, r, j]) < 0.05 * (hi - lo)
    assert float(res.kkt_stationarity.max()) < 1e-3
    assert float(res.kkt_dual_infeasibility.max()) < 1e-2


def test_ascend_revives_zero_voxels_that_should_grow():
    """EM steps cannot move an exact zero: a start at 0 in a voxel whose gradient is positive must still
    reach the optimum (else the inner problems are under-solved and the intervals too narrow)."""
    model, _, y = _two_pixel_problem()
    zeros = torch.zeros((1, 1, 1, 2))
    x0 = torch.tensor([4.0, 0.0]).reshape(1, 1, 1, 2)
    one = torch.ones(1, dtype=torch.float64)
    assert float(kkt_residuals(model, y.unsqueeze(0), one, zeros, x0)[1][0]) > 0.1  # voxel 1 wants to grow
    x, obj, _ = ascend(model, y.unsqueeze(0), one, zeros, x0, 300)
    _, obj_ref, _ = ascend(model, y.unsqueeze(0), one, zeros, torch.full((1, 1, 1, 2), 4.0), 300)
    assert float(x[0, 0, 0, 1]) > 1.0
    assert float(obj[0]) > float(obj_ref[0]) - 1e-3
    assert float(kkt_residuals(model, y.unsqueeze(0), one, zeros, x)[1][0]) < 1e-3


def _tiny_2d(seed=0):
    """A 4x4 image seen by 40 random non-negative 'LORs', background 0.5 count per bin."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(40, 16, generator=gen) * (torch.rand(40, 16, generator=gen) < 0.4)
    model = DenseAcquisitionModel(a * 4.0, additive=torch.full((1, 1, 40), 0.5), image_shape=(1, 4, 4))
    truth = torch.ones(1, 4, 4) * 2.0
    truth[0, 1:3, 1:3] = 6.0
    roi = torch.zeros(1, 4, 4, dtype=torch.bool)
    roi[0, 1:3, 1:3] = True
    return model, truth, {"hot": roi}


def _mlem_estimator(model, y):
    return mlem(model, y, 10).image


FAST = SolverConfig(
    ml_iterations=40, inner_iterations=5, grid_ratio=1.5, coarse_ratio=3.0, max_steps=25, extra_rounds=1
)


@pytest.fixture(scope="module")
def coverage_run():
    model, truth, masks = _tiny_2d()
    gen = torch.Generator().manual_seed(1)
    expected = model.forward(truth)
    reals = [frame_counts(expected, 5, 60.0, gen) for _ in range(200)]
    ests = {"good": _mlem_estimator, "bad": constant_estimator(torch.full((1, 4, 4), 20.0))}
    out = batch_intervals(model, reals, ests, masks, alpha=0.1, truth=truth, config=FAST)
    return out, float(truth[masks["hot"]].mean())


def _min_coverage(n: int, alpha: float) -> float:
    return 1 - alpha - 3 * math.sqrt(alpha * (1 - alpha) / n)


def test_coverage_good_and_bad_estimator(coverage_run):
    out, t_roi = coverage_run
    lo, hi = out["lower"][:, :, 0], out["upper"][:, :, 0]  # (P, est, frames)
    covered = (lo <= t_roi) & (t_roi <= hi)
    n = covered.shape[0]
    for j in range(2):
        for f in range(covered.shape[-1]):
            assert covered[:, j, f].mean() >= _min_coverage(n, 0.1)
        # the set itself holds the truth at every frame at once (Ville), at least as often
        assert out["truth_in_set"][:, j].all(axis=1).mean() >= _min_coverage(n, 0.1)
    # the good estimator gives narrower valid intervals than the bad one
    width = hi - lo
    assert np.median(width[:, 0, -1]) < 0.8 * np.median(width[:, 1, -1])


def test_anytime_running_intersection_and_stopping(coverage_run):
    out, t_roi = coverage_run
    rlo, rhi = out["running_lower"][:, :, 0], out["running_upper"][:, :, 0]
    assert (np.diff(rhi - rlo, axis=-1) <= 1e-12).all()  # never widens
    assert (rlo >= out["lower"][:, :, 0] - 1e-12).all() and (rhi <= out["upper"][:, :, 0] + 1e-12).all()
    covered_all = ((rlo <= t_roi) & (t_roi <= rhi)).all(axis=-1)
    n = covered_all.shape[0]
    assert covered_all[:, 0].mean() >= _min_coverage(n, 0.1)
    # stop at the first frame where the running width is below a target chosen by looking at the data
    width = rhi[:, 0] - rlo[:, 0]
    target = np.median(width[:, 1])
    stop = np.where((width < target).any(axis=1), (width < target).argmax(axis=1), width.shape[1] - 1)
    at_stop = np.arange(n), stop
    ok = (rlo[:, 0][at_stop] <= t_roi) & (t_roi <= rhi[:, 0][at_stop])
    assert ok.mean() >= _min_coverage(n, 0.1)


def test_single_run_result_and_scan_time():
    model, truth, masks = _tiny_2d(seed=3)
    gen = torch.Generator().manual_seed(5)
    frames = frame_counts(model.forward(truth), 4, 40.0, gen)
    res = confidence_intervals(model, frames, {"good": _mlem_estimator}, masks, alpha=0.2, truth=truth, config=FAST)
    iv = res.intervals["good"]["hot"]
    assert res.first_frame == 2 and len(iv["lower"]) == 3 and res.frame_end_s == [20.0, 30.0, 40.0]
    assert all(a <= b for a, b in zip(iv["running_lower"], iv["running_upper"]))
    t = scan_time_needed(res, "good", "hot", target_width=max(iv["running_width"]) + 1.0)
    assert t == 20.0
    assert scan_time_needed(res, "good", "hot", target_width=1e-9) is None
    d = res.to_dict()
    assert d["truth_roi_mean"]["hot"] == pytest.approx(6.0)


def test_data_free_initial_guess_uses_frame_one():
    model, truth, masks = _tiny_2d(seed=4)
    frames = frame_counts(model.forward(truth), 3, 30.0, torch.Generator().manual_seed(2))
    thr = sequential_thresholds(model, frames, {"good": _mlem_estimator}, 0.1, initial=torch.full((1, 4, 4), 3.0))
    assert thr["first_frame"] == 1 and len(thr["threshold"]["good"]) == 3
    # the first term is the data-free guess' likelihood of frame 1
    l1 = float(log_likelihood(model, frames.counts[0], float(frames.fractions[0]), torch.full((1, 4, 4), 3.0)))
    assert thr["mix"]["good"][0] == pytest.approx(l1)
    assert thr["threshold"]["good"][0] == pytest.approx(l1 - math.log(10))


def test_prior_mixing_threshold_is_log_mean_exp():
    model, truth, _ = _tiny_2d()
    gen = torch.Generator().manual_seed(0)
    y = torch.poisson(model.forward(truth), generator=gen)
    fit, ev = split_events_counts(y, 0.5, gen)
    assert torch.equal(fit + ev, y) and (fit >= 0).all() and (ev >= 0).all()
    draws = torch.stack([truth * 0.9, truth * 1.1])
    thr = prior_mixing_threshold(model, ev, 0.5, draws, 0.1)
    ll = torch.stack([log_likelihood(model, ev, 0.5, d) for d in draws])
    assert thr == pytest.approx(float(torch.logsumexp(ll, 0) - math.log(2) - math.log(10)))


# ------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_errors():
    model, truth, masks = _tiny_2d()
    frames = frame_counts(model.forward(truth), 3, 30.0, torch.Generator().manual_seed(0))
    for alpha in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha must be in"):
            check_alpha(alpha)
    with pytest.raises(ValueError, match="has no events"):
        Frames(torch.zeros(2, 1, 1, 40), torch.tensor([0.5, 0.5]), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="ROI 'big' has shape"):
        confidence_intervals(model, frames, {"g": _mlem_estimator}, {"big": torch.ones(1, 5, 5, dtype=torch.bool)})
    for bad, msg in ((float("nan"), "NaN"), (-1.0, "negative")):
        with pytest.raises(ValueError, match=msg) as info:
            confidence_intervals(model, frames, {"broken": constant_estimator(torch.full((1, 4, 4), bad))}, masks)
        assert "\n" not in str(info.value) and "broken" in str(info.value)
    blind = DenseAcquisitionModel(
        model.matrix * torch.tensor([0.0] + [1.0] * 15), additive=model.additive, image_shape=(1, 4, 4)
    )
    corner = torch.zeros(1, 4, 4, dtype=torch.bool)
    corner[0, 0, 0] = True
    with pytest.raises(ValueError, match="outside the field of view"):
        confidence_intervals(blind, frames, {"g": _mlem_estimator}, {"corner": corner})


def test_frame_listmode_histograms_prompts():
    from petuq_sirf.io.listmode import ListModeEvents

    ev = ListModeEvents(
        np.array([0, 1, 1, 2, 3]),
        np.array([100.0, 1500.0, 2500.0, 2600.0, 3900.0]),
        np.array([True, True, False, True, True]),
        (1, 1, 4),
    )
    fr = frame_listmode(ev, 2, duration_s=4.0)
    assert fr.counts[0].flatten().tolist() == [1, 1, 0, 0] and fr.counts[1].flatten().tolist() == [0, 0, 1, 1]
    assert fr.fractions.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="has no events"):
        frame_listmode(ev, 8, duration_s=4.0)
