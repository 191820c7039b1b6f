"""Calibration metrics: coverage, CRPS, NLL, conformal recalibration, frequentist protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from petuq_sirf.uq import calibration as cal

SHAPE = (1, 32, 32)


def _gaussian_world(m: int = 30, sigma_scale: float = 1.0, seed: int = 0):
    """Truth, and M realisations whose predicted mean ~ N(truth, sigma) with predicted std sigma * scale."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(SHAPE, generator=g) * 4
    sigma = 0.1 + 0.5 * torch.rand(SHAPE, generator=g)
    mean = truth + sigma * torch.randn((m, *SHAPE), generator=g)
    std = (sigma * sigma_scale).expand(m, *SHAPE).clone()
    return truth, mean, std


def test_gaussian_predictions_with_correct_std_are_calibrated():
    truth, mean, std = _gaussian_world()
    curve = cal.coverage_curve(truth, mean=mean, std=std)
    for nominal, observed in curve.items():
        assert abs(observed - nominal) < 0.02
    assert cal.calibration_error(curve) < 0.015


def test_samples_with_known_truth_give_nominal_coverage():
    # truth ~ posterior: sample from N(mu, s) and draw truth from the same distribution
    g = torch.Generator().manual_seed(1)
    mu = torch.rand((4, *SHAPE), generator=g)
    s = 0.2 + torch.rand((4, *SHAPE), generator=g)
    truth = mu + s * torch.randn(mu.shape, generator=g)
    samples = mu + s * torch.randn((400, *mu.shape), generator=g)
    curve = cal.coverage_curve(truth, samples=samples)
    assert cal.calibration_error(curve) < 0.02
    assert abs(curve[0.9] - 0.9) < 0.03


def test_overconfident_std_undercovers_and_conformal_fixes_it():
    truth, mean, std = _gaussian_world(m=40, sigma_scale=0.5)
    cal_t, cal_m, cal_s = truth, mean[:20], std[:20]
    before = cal.coverage_curve(truth, mean=mean[20:], std=std[20:])
    assert before[0.9] < 0.75  # std half the truth: about 0.62 coverage at 90 %
    scales = cal.conformal_scales(cal_t, cal_m, cal_s)
    assert all(1.6 < v < 2.4 for v in scales.values())  # ideal factor 2
    after = cal.coverage_curve(truth, mean=mean[20:], std=std[20:], scale=scales)
    for nominal, observed in after.items():
        assert observed >= nominal - 0.01
    assert cal.calibration_error(after) < 0.02


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = torch.arange(1.0, 11.0)  # n = 10
    assert cal.conformal_quantile(scores, 0.9) == 10.0  # ceil(11 * 0.9) = 10
    assert cal.conformal_quantile(scores, 0.95) == math.inf  # ceil(11 * 0.95) = 11 > n
    scores = torch.arange(1.0, 20.0)  # n = 19: ceil(20 * 0.9) = 18 -> 18th smallest
    assert cal.conformal_quantile(scores, 0.9) == 18.0
    assert cal.conformal_quantile(scores, 0.5) == 10.0


def test_crps_gaussian_closed_form_matches_samples_and_known_value():
    truth = torch.zeros(SHAPE)
    mean = torch.zeros(SHAPE)
    std = torch.ones(SHAPE)
    # CRPS of N(0, 1) at 0 = 2 phi(0) - 1/sqrt(pi)
    expected = 2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)
    assert cal.crps(truth, mean=mean, std=std) == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(2)
    samples = torch.randn((2000, *SHAPE), generator=g)
    assert cal.crps(truth, samples=samples) == pytest.approx(expected, rel=0.05)
    # a biased prediction scores worse
    assert cal.crps(truth, mean=mean + 1, std=std) > expected


def test_nll_sharpness_and_z_scores():
    truth, mean, std = _gaussian_world(m=20)
    z = cal.z_scores(truth, mean, std)
    summary = cal.z_score_summary(z)
    assert abs(summary["mean"]) < 0.03 and abs(summary["std"] - 1) < 0.03
    assert summary["frac_abs_gt_1.96"] == pytest.approx(0.05, abs=0.01)
    nll_good = cal.gaussian_nll(truth, mean, std)
    assert nll_good < cal.gaussian_nll(truth, mean, std * 0.3)
    assert nll_good < cal.gaussian_nll(truth, mean, std * 3)
    width = cal.sharpness(mean=mean, std=std, level=0.9)
    assert width == pytest.approx(2 * 1.6449 * float(std.mean()), rel=1e-3)


def test_mask_and_regions_are_respected():
    truth, mean, std = _gaussian_world(m=10)
    left = torch.zeros(SHAPE, dtype=torch.bool)
    left[..., :16] = True
    std = std.clone()
    std[..., 16:] *= 0.2  # right half overconfident
    out = cal.evaluate_uq(truth, mean=mean, std=std, regions={"left": left, "right": ~left})
    assert abs(out["regions"]["left"]["coverage"]["0.90"] - 0.9) < 0.03
    assert out["regions"]["right"]["coverage"]["0.90"] < 0.4
    assert out["regions"]["right"]["coverage"]["0.90"] < out["coverage"]["0.90"] < 0.9
    with pytest.raises(ValueError, match="mask shape"):
        cal.coverage_curve(truth, mean=mean, std=std, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        cal.coverage_curve(truth, mean=mean, std=std, mask=torch.zeros(SHAPE, dtype=torch.bool))
    with pytest.raises(ValueError, match="level"):
        cal.coverage_curve(truth, mean=mean, std=std, levels=[1.2])


def test_frequentist_protocol_table():
    truth, mean, std = _gaussian_world(m=25)
    out = cal.frequentist_coverage(truth, mean=mean, std=std)
    assert out["num_realisations"] == 25
    assert abs(out["coverage"]["0.90"] - 0.9) < 0.02
    assert out["empirical_sd"] == pytest.approx(out["mean_predicted_std"], rel=0.1)
    assert set(out["coverage_per_realisation_std"]) == set(out["coverage"])
    g = torch.Generator().manual_seed(3)
    samples = mean + std * torch.randn((64, *mean.shape), generator=g)  # (S, M, z, y, x)
    out_s = cal.frequentist_coverage(truth, samples=samples)
    assert abs(out_s["coverage"]["0.90"] - 0.9) < 0.04  # 64-sample quantiles are slightly narrow
    table = cal.coverage_table({"gauss": out, "samples": out_s})
    assert "gauss" in table and "0.90" in table
    with pytest.raises(ValueError, match="realisations"):
        cal.frequentist_coverage(truth, mean=mean[:1], std=std[:1])


def test_rank_correlation_matches_known_values():
    a = torch.arange(10.0).reshape(1, 2, 5)
    assert cal.rank_correlation(a, a**3) == pytest.approx(1.0)
    assert cal.rank_correlation(a, -a) == pytest.approx(-1.0)
    b = torch.tensor([1.0, 2, 2, 3, 4, 5, 6, 7, 8, 9]).reshape(1, 2, 5)  # a tie
    # Spearman with ties: Pearson correlation of average ranks (the tied pair shares rank 2.5)
    ranks_b = np.array([1, 2.5, 2.5, 4, 5, 6, 7, 8, 9, 10])
    expected = np.corrcoef(np.arange(1, 11), ranks_b)[0, 1]
    assert cal.rank_correlation(a, b) == pytest.approx(expected)


def test_interval_score_weighs_width_against_misses():
    from petuq_sirf.uq.calibration import interval_score

    truth = torch.tensor([0.0, 1.0, 2.0, 10.0]).reshape(1, 1, 4)
    lo, hi = truth - 1, truth + 1
    assert interval_score(truth, lo, hi, 0.9) == pytest.approx(2.0)  # all covered: the width
    # the last voxel missed by 3 above: width 2 plus (2 / 0.1) * 3 on that voxel
    lo2, hi2 = lo.clone(), hi.clone()
    lo2[..., 3], hi2[..., 3] = 12.0, 14.0
    assert interval_score(truth, lo2, hi2, 0.9) == pytest.approx((2 * 4 + 20 * 2) / 4)
    # for Gaussian data the 90 % interval of the true law scores better than a narrower or a wider one
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 400, 500, generator=g)
    scores = {
        k: interval_score(x, -k * 1.6449 * torch.ones_like(x), k * 1.6449 * torch.ones_like(x), 0.9)
        for k in (0.7, 1.0, 1.4)
    }
    assert scores[1.0] < scores[0.7] and scores[1.0] < scores[1.4]
    mask = torch.tensor([True, True, True, False]).reshape(1, 1, 4)
    assert interval_score(truth, lo2, hi2, 0.9, mask) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="not in"):
        interval_score(truth, lo, hi, 1.5)
