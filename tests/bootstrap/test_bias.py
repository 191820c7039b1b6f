"""Parametric-bootstrap bias correction: smaller bias than the MAP on a problem with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, BootstrapSummary
from petuq_sirf.bootstrap.bias import bias_corrected_summary, estimate_bias, parametric_draw
from petuq_sirf.recon import map_rdp, osem
from petuq_sirf.simulation import nema_iec_phantom, simulate
from petuq_sirf.simulation.simulate import SimulationConfig

CFG = BootstrapConfig(num_replicates=4, num_iterations=5, full_data_iterations=20, seed=2)


@pytest.fixture(scope="module")
def nema_problem(layout_2d, image_2d):
    sim = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=1e6, seed=4, listmode=True))
    problem = BootstrapProblem.from_acquisition(sim.to_acquisition())
    return sim, problem


def test_parametric_correction_reduces_the_bias_of_the_map(nema_problem):
    """Known truth, noise-free data (so the MAP's error is its bias): the corrected image is closer."""
    sim, problem = nema_problem
    model = problem.model()
    y = sim.expected_prompts.float()  # the data's expectation: MAP(E y) ~ E MAP(y) to first order
    problem.prepare(CFG, x0=torch.zeros(sim.truth.shape))  # the prior from the data
    with torch.no_grad():
        x_hat = map_rdp(model, y, problem.prior, CFG.full_data_iterations, x0=osem(model, y, 2, 8).image).image
    problem.x0 = x_hat
    est = estimate_bias(problem, CFG, num_draws=4)
    truth = sim.truth.numpy().astype(np.float64)
    body = truth > 0
    corrected = est.corrected(x_hat.numpy())
    err_map = np.sqrt(np.mean((x_hat.numpy() - truth)[body] ** 2))
    err_cor = np.sqrt(np.mean((corrected - truth)[body] ** 2))
    assert err_cor < 0.95 * err_map, (err_cor, err_map)
    # ROI means of the hot spheres: the MAP is biased low, the correction moves them towards the truth
    hot = [k for k, v in sim.regions.items() if k.startswith("hot") and v.any()]
    assert hot
    for name in hot:
        m = sim.regions[name].numpy().astype(bool)
        t = truth[m].mean()
        assert x_hat.numpy()[m].mean() < t  # partial volume + smoothing
        assert abs(corrected[m].mean() - t) < abs(x_hat.numpy()[m].mean() - t), name
    assert est.draws == 4 and (est.mc_variance >= 0).all()


def test_draws_are_reproducible_and_stored(nema_problem, tmp_path):
    sim, problem = nema_problem
    problem.prepare(BootstrapConfig(full_data_iterations=3), x0=sim.truth)
    cfg = BootstrapConfig(full_data_iterations=3, seed=5)
    a = parametric_draw(problem, cfg, 1)
    np.testing.assert_array_equal(a, parametric_draw(problem, cfg, 1))
    assert not np.array_equal(a, parametric_draw(problem, cfg, 2))
    est = estimate_bias(problem, cfg, 2, folder=tmp_path)
    files = sorted((tmp_path / "bias").glob("draw_*.npy"))
    assert len(files) == 2
    np.testing.assert_array_equal(np.load(files[1]), a)
    again = estimate_bias(problem, cfg, 2, folder=tmp_path)  # reused from disk
    np.testing.assert_array_equal(est.bias, again.bias)
    with pytest.raises(ValueError):
        estimate_bias(problem, cfg, 1)


def test_corrected_summary_shifts_mean_intervals_and_rois():
    mean = np.full((1, 2, 2), 2.0)
    s = BootstrapSummary(
        count=5,
        mean=mean,
        std=np.full_like(mean, 0.5),
        median=mean.copy(),
        intervals={0.9: (mean - 1, mean + 1)},
        roi={"a": {"mean": 2.0, "std": 0.1, "interval_0.90": [1.9, 2.1], "inside_0.90": False, "truth": 2.5}},
    )
    from petuq_sirf.bootstrap.bias import BiasEstimate

    est = BiasEstimate(np.full_like(mean, -0.5), np.full_like(mean, 0.01), 4)
    regions = {"a": np.ones((1, 2, 2), bool)}
    c = bias_corrected_summary(s, est, regions, truth=np.full_like(mean, 2.5))
    np.testing.assert_allclose(c.mean, 2.5)
    np.testing.assert_allclose(c.intervals[0.9][0], 1.5)
    np.testing.assert_allclose(c.std, np.sqrt(0.25 + 0.01))
    assert c.roi["a"]["interval_0.90"] == pytest.approx([2.4, 2.6]) and c.roi["a"]["inside_0.90"]


def test_cli_bias_correction(tmp_path):
    from petuq_sirf.cli.main import main

    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "1e5", "--listmode", "--out", str(acq)]) == 0
    out = tmp_path / "boot"
    argv = ["bootstrap", str(acq), "--replicates", "3", "--iterations", "3", "--full-data-iterations", "5"]
    argv += ["--bias-correction", "parametric", "--bias-draws", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["bias_corrected"]
    assert block["draws"] == 2 and "0.90" in block["coverage_quantile_intervals"]
    assert block["nrmse_full_data_map"] > 0 and block["nrmse_bias_corrected"] > 0
    for name in ("bias_estimate", "mean_bias_corrected", "lower_0.90_bias_corrected", "upper_0.90_bias_corrected"):
        assert (out / f"{name}.nii.gz").is_file()
    assert main(argv[:-4] + ["1", "--out", str(tmp_path / "b2"), "--quiet"]) == 2
