"""Recalibration on anatomical calibration phantoms with Mondrian classes (issue 10, item 4)."""

from __future__ import annotations

from petuq_sirf.recon import weights as reconstruct_uq
from petuq_sirf.recon.family_data import family_low_dose_set
from petuq_sirf.recon.lowdose import geometric_model
from petuq_sirf.simulation.phantom_families import split_of


def test_family_low_dose_set_uses_the_split_and_carries_roi_masks(layout_2d, image_2d):
    geometric = geometric_model(layout_2d, image_2d)
    data = family_low_dose_set(layout_2d, image_2d, ["thorax", "brain"], "calibration", 1, 5e4, geometric)
    assert len(data) == 2 and data.init.shape == (2, *image_2d.shape)
    assert all({"object", "lesions", "edges", "background"} <= set(r) for r in data.regions)
    assert float(data.prompts.sum(dim=(1, 2, 3)).min()) > 3e4  # about 5e4 trues plus scatter and randoms
    assert split_of(100_000) == "calibration"


def test_cli_calibrate_unrolled_on_families_stores_mondrian_and_reconstruct_uses_it(tmp_path):
    from petuq_sirf.cli.main import main

    weights = tmp_path / "cal.safetensors"
    args = ["calibrate-unrolled", "--calibration-phantoms", "1", "--calibration-samples", "2"]
    assert main([*args, "--calibration-families", "thorax,ellipses", "--out", str(weights)]) == 0
    _, _, info = reconstruct_uq.load_network("unrolled", weights)
    assert info["calibration"]["families"] == ["thorax", "ellipses"]
    assert info["calibration"]["discrepancy_threshold"] == 0.0  # fitted on the refined mean, reconstruct's default
    mondrian = reconstruct_uq.mondrian_of(info)
    assert mondrian is not None and mondrian.global_quantiles[0.9] > 0
    assert set(reconstruct_uq.conformal_scales_of(info)) == {0.5, 0.6, 0.7, 0.8, 0.9, 0.95}
    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "brain", "--counts", "5e4", "--seed", "3", "--out", str(acq)]) == 0
    out = tmp_path / "rec"
    args = ["reconstruct", str(acq), "--method", "unrolled", "--weights", str(weights), "--samples", "2"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "lower_90_mondrian.nii.gz").is_file() and (out / "upper_90_mondrian.nii.gz").is_file()
    # the per-class std factors are stored and the recalibrated std written: factor x std, class by class
    scaler = reconstruct_uq.std_scaling_of(info)
    assert scaler is not None and scaler.global_factor > 0 and scaler.factors
    import nibabel as nib
    import numpy as np

    std = np.asarray(nib.load(out / "std.nii.gz").dataobj)
    std_cal = np.asarray(nib.load(out / "std_calibrated.nii.gz").dataobj)
    ratio = std_cal[std > 1e-3] / std[std > 1e-3]
    factors = [*scaler.factors.values(), scaler.global_factor]
    assert np.all(np.min(np.abs(ratio[:, None] - np.array(factors)[None]), axis=1) < 1e-3 * max(factors))


def test_unknown_calibration_family_is_a_clear_error(tmp_path, capsys):
    from petuq_sirf.cli.main import main

    args = ["calibrate-unrolled", "--calibration-families", "liver", "--out", str(tmp_path / "w.safetensors")]
    assert main(args) == 2
    assert "unknown phantom families" in capsys.readouterr().err


def test_noise_realisations_are_poisson_draws_of_the_phantoms_expected_prompts(layout_2d, image_2d):
    import torch

    from petuq_sirf.recon.family_data import noise_realisations

    geometric = geometric_model(layout_2d, image_2d)
    data = family_low_dose_set(layout_2d, image_2d, ["thorax"], "calibration", 2, 1e5, geometric)
    model, ys = noise_realisations(data, geometric, 1, 40, seed=3)
    expected = geometric.with_terms(data.multiplicative[1], data.additive[1]).forward(data.truth[1])
    assert ys.shape == (40, *expected.shape) and torch.equal(ys, ys.round()) and bool((ys >= 0).all())
    assert torch.allclose(model.forward(data.truth[1]), expected)
    assert abs(float(ys.sum(dim=(1, 2, 3)).mean() / expected.sum()) - 1) < 0.01
    assert torch.equal(ys, noise_realisations(data, geometric, 1, 40, seed=3)[1])
    assert not torch.equal(ys, noise_realisations(data, geometric, 1, 40, seed=4)[1])
