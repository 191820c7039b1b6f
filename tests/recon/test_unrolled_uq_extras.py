"""Unrolled network: split-conformal recalibration stored with the weights, and AIS over a weight subset."""

from __future__ import annotations

import json

import pytest
import torch

from petuq_sirf.inference.ais import PMCConfig
from petuq_sirf.inference.weight_posterior import ParticlePosterior, load_posterior, save_posterior
from petuq_sirf.recon import weights as recon_weights
from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
from petuq_sirf.recon.unrolled import calibrate_unrolled, predict_unrolled
from petuq_sirf.recon.unrolled_ais import UnrolledAISConfig, default_ais_names, fit_unrolled_ais
from petuq_sirf.simulation.simulate import geometric_model
from petuq_sirf.uq.calibration import gaussian_quantile


@pytest.fixture(scope="module")
def geometric(layout_2d, image_2d):
    return geometric_model(layout_2d, image_2d)


@pytest.fixture(scope="module")
def shipped():
    return recon_weights.load_network("unrolled")


def _lesion_set(layout, image, geometric, seed, num=4):
    return make_low_dose_set(layout, image, LowDoseConfig(num, seed=seed, lesion_probability=1.0), geometric)


def test_conformal_scales_restore_coverage_on_held_out_phantoms(layout_2d, image_2d, geometric, shipped):
    net, posterior, _ = shipped
    # 8 + 8 phantoms: voxel errors within a phantom are correlated, so the realised coverage of a split
    # conformal interval scatters by a few per cent with only a handful of calibration/test phantoms
    calib = _lesion_set(layout_2d, image_2d, geometric, 2000, 8)
    test = _lesion_set(layout_2d, image_2d, geometric, 3000, 8)
    scales = calibrate_unrolled(net, calib, geometric, posterior, num_samples=8)
    assert set(scales) == {0.5, 0.6, 0.7, 0.8, 0.9, 0.95} and all(v > 0 for v in scales.values())
    pred = predict_unrolled(net, test.model(geometric), test.prompts, test.init, posterior, 8, seed=5)
    body = torch.stack([r["background"] for r in test.regions])
    lo, hi = pred.interval(0.9)
    raw = float(((test.truth >= lo) & (test.truth <= hi))[body].double().mean())
    z = (test.truth - pred.mean).abs() / pred.std
    conformal = {v: float((z <= scales[v] * gaussian_quantile(v))[body].double().mean()) for v in (0.9, 0.95)}
    # calibrated coverage is close to nominal on both sides, and closer than the raw posterior interval's
    for v in (0.9, 0.95):
        assert abs(conformal[v] - v) <= 0.02, (raw, conformal)
    assert abs(conformal[0.9] - 0.9) < abs(raw - 0.9), (raw, conformal)
    # the recalibration does something: the unscaled Gaussian intervals cover differently
    gauss_95 = float((z <= gaussian_quantile(0.95))[body].double().mean())
    assert abs(scales[0.95] - 1) > 0.02 and abs(gauss_95 - conformal[0.95]) > 0.005, (gauss_95, conformal)


def test_cli_calibrate_then_reconstruct_writes_conformal_intervals(tmp_path):
    from petuq_sirf.cli.main import main

    weights = tmp_path / "cal"
    args = ["calibrate-unrolled", "--calibration-phantoms", "2", "--calibration-samples", "2", "--out", str(weights)]
    assert main(args) == 0
    _, _, info = recon_weights.load_network("unrolled", weights)
    scales = recon_weights.conformal_scales_of(info)
    assert set(scales) == {0.5, 0.6, 0.7, 0.8, 0.9, 0.95}
    assert info["calibration"]["phantoms"] == 2 and "calibrate-unrolled" in info["calibration"]["command"]
    assert recon_weights.conformal_scales_of({}) == {}  # files without scales: raw intervals only
    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "ellipses", "--counts", "5e4", "--seed", "3", "--out", str(acq)]) == 0
    out = tmp_path / "rec"
    args = ["reconstruct", str(acq), "--method", "unrolled", "--weights", str(weights), "--samples", "3"]
    assert main([*args, "--out", str(out)]) == 0
    for name in ("lower_90", "upper_90", "lower_90_conformal", "upper_90_conformal", "lower_95_conformal"):
        assert (out / f"{name}.nii.gz").is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    both = metrics["coverage_raw_vs_conformal"]["0.90"]
    assert 0 <= both["raw"] <= 1 and 0 <= both["conformal"] <= 1
    assert metrics["conformal_scales"]["0.90"] == pytest.approx(scales[0.9])


def test_calibration_per_count_level_is_stored_and_chosen_by_the_data_counts(tmp_path):
    """``--calibration-counts``: one calibration per count level (the training level among them, equal to the
    top-level one); ``reconstruct`` applies the level nearest the data's true counts and records both."""
    from petuq_sirf.cli.main import main

    weights = tmp_path / "cal"
    args = ["calibrate-unrolled", "--calibration-phantoms", "2", "--calibration-samples", "2"]
    assert main([*args, "--calibration-counts", "1e4,1e6", "--out", str(weights)]) == 0
    _, _, info = recon_weights.load_network("unrolled", weights)
    by = info["calibration_by_counts"]
    assert sorted(float(k) for k in by) == [1e4, info["true_counts"], 1e6]
    assert by[f"{info['true_counts']:g}"]["conformal_scales"] == info["conformal_scales"]
    low = recon_weights.conformal_scales_of(by["10000"])
    high = recon_weights.conformal_scales_of(by["1e+06"])
    assert low != high  # calibrated on other data: other scales
    for counts, level, scales in (("1.2e4", 1e4, low), ("8e5", 1e6, high)):
        acq, out = tmp_path / f"acq{counts}", tmp_path / f"rec{counts}"
        assert main(["simulate", "--phantom", "ellipses", "--counts", counts, "--seed", "3", "--out", str(acq)]) == 0
        rec = ["reconstruct", str(acq), "--method", "unrolled", "--weights", str(weights), "--samples", "2"]
        assert main([*rec, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["calibration_true_counts"] == level
        assert 0.5 * float(counts) < metrics["estimated_true_counts"] < 2 * float(counts)
        assert metrics["conformal_scales"]["0.90"] == pytest.approx(scales[0.9])


def test_calibration_for_counts_picks_the_nearest_level_in_log_counts():
    info = {
        "conformal_scales": {"0.90": 1.0},
        "calibration_by_counts": {
            "50000": {"conformal_scales": {"0.90": 0.5}},
            "1e+06": {"conformal_scales": {"0.90": 2.0}},
        },
    }
    for counts, level, scale in ((2e5, 5e4, 0.5), (2.5e5, 1e6, 2.0), (1e3, 5e4, 0.5), (1e9, 1e6, 2.0)):
        chosen, got = recon_weights.calibration_for_counts(info, counts)
        assert got == level and recon_weights.conformal_scales_of(chosen)[0.9] == scale
    assert recon_weights.calibration_for_counts({"conformal_scales": {"0.90": 1.0}}, 1e5)[1] is None  # one level
    with pytest.raises(ValueError, match="true counts must be > 0"):
        recon_weights.calibration_for_counts(info, 0.0)


def test_ais_over_a_weight_subset_gives_varying_draws(layout_2d, image_2d, geometric, shipped, tmp_path):
    net, _, info = shipped
    data = make_low_dose_set(layout_2d, image_2d, LowDoseConfig(2, seed=4000), geometric)
    cfg = UnrolledAISConfig(
        num_images=2,
        num_draws=8,
        pmc=PMCConfig(num_proposals=4, samples_per_proposal=8, iterations=4, sigma_prop=1e-3, init_spread=1e-3),
    )
    res = fit_unrolled_ais(net, data, geometric, cfg)
    assert res.names == default_ais_names(net) == ["log_beta", "regulariser.6.bias"]
    assert 1.0 <= res.ess <= res.num_particles and res.num_particles == 2 * 4 * 8
    assert res.ess > 1.5, res.pmc.ess_per_iteration  # more than one particle carries weight
    draws = res.posterior.draws
    assert draws["log_beta"].shape == (8, *net.log_beta.shape)
    assert float(draws["log_beta"].std(0).max()) > 0  # the draws vary
    assert all(p.requires_grad for p in net.parameters())  # the network is left trainable
    pred = predict_unrolled(net, data.model(geometric), data.prompts, data.init, res.posterior, 4, seed=1)
    assert float(pred.epistemic_std.max()) > 0 and torch.isfinite(pred.mean).all()
    # stored like SVI posteriors: the draws round-trip through safetensors
    path = save_posterior(tmp_path / "ais", net, res.posterior, {"info": json.dumps(info)})
    loaded, _ = load_posterior(path, type(net)(net.config))
    assert isinstance(loaded, ParticlePosterior)
    assert all(torch.equal(loaded.draws[k], v) for k, v in draws.items())


def test_cli_train_unrolled_with_ais_posterior(tmp_path):
    from petuq_sirf.cli.main import main

    out = tmp_path / "ais"
    args = "train-unrolled --phantoms 2 --validation-phantoms 1 --unrolled-iterations 2 --channels 4 --steps 2"
    args += " --head-steps 1 --posterior ais --ais-iterations 2 --ais-draws 4 --calibration-phantoms 2"
    args += " --calibration-samples 2 --batch-size 2"
    assert main([*args.split(), "--out", str(out)]) == 0
    net, posterior, info = recon_weights.load_network("unrolled", out)
    assert isinstance(posterior, ParticlePosterior) and posterior.num_draws == 4
    assert info["posterior"] == "ais" and 1 <= info["ais"]["ess"] <= info["ais"]["particles"]
    assert set(info["conformal_scales"]) == {"0.50", "0.60", "0.70", "0.80", "0.90", "0.95"}
    assert "--posterior ais" in info["command"]
    bad = ["train-unrolled", "--phantoms", "1", "--posterior", "ais", "--ais-draws", "1", "--steps", "0"]
    assert main([*bad, "--head-steps", "0", "--out", str(tmp_path / "x")]) == 2


def test_train_unrolled_on_a_3d_acquisition(tmp_path):
    """The 3D option: EM steps through the 3D projector, the CNN regulariser slice by slice."""
    import json as _json

    from petuq_sirf.cli.main import main
    from petuq_sirf.inference.weight_posterior import read_weights_metadata

    out = tmp_path / "u3d"
    argv = ["train-unrolled", "--scanner", "test-3d", "--phantoms", "2", "--validation-phantoms", "1"]
    argv += ["--steps", "2", "--head-steps", "1", "--svi-steps", "1", "--calibration-phantoms", "1"]
    argv += ["--calibration-samples", "2", "--out", str(out)]
    assert main(argv) == 0
    meta = read_weights_metadata(out)
    assert "test-3d" in _json.dumps(meta)
