"""Denoisers on simulated PET reconstructions: accuracy, informative uncertainty, conformal coverage,
training data, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petuq_sirf.bayes import DenoiserConfig, DenoisingDataConfig, NetworkConfig, load_or_generate, make_denoiser
from petuq_sirf.bayes.checkpoint import CheckpointError, load_denoiser, save_denoiser
from petuq_sirf.bayes.training_data import generate_pairs
from petuq_sirf.uq import calibration as cal

SMALL_NET = NetworkConfig(width=16, dilations=(1, 2, 2, 1))
DATA = DenoisingDataConfig(num_phantoms=16, dose_fractions=(0.03,), seed=3)  # low dose: 3 % of 1e6 counts


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    data = load_or_generate(DATA, tmp_path_factory.mktemp("cache"))
    train, test = data.split_by_phantom(0.375, seed=0)  # 10 training and 6 held-out phantoms
    return train, test


@pytest.fixture(scope="module")
def svi_model(splits):
    train, _ = splits
    config = DenoiserConfig(
        method="svi", network=SMALL_NET, epochs=30, batch_size=4, lr=5e-3, svi_steps=30, svi_lr=2e-3, seed=0
    )
    model = make_denoiser(config)
    model.fit(train)
    return model


def test_training_data_is_deterministic_and_cached(tmp_path):
    config = DenoisingDataConfig(num_phantoms=1, dose_fractions=(0.02, 0.1), seed=7)
    a = generate_pairs(config)
    b = load_or_generate(config, tmp_path)
    c = load_or_generate(config, tmp_path)  # from the cache
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert a.noisy.shape == (2, 64, 64) and torch.equal(a.noisy, b.noisy) and torch.equal(b.noisy, c.noisy)
    assert torch.equal(a.dose, torch.tensor([0.02, 0.1]))
    # images are in reconstruction units: 5x the dose gives about 5x the activity
    assert float(a.target[1].sum() / a.target[0].sum()) == pytest.approx(5.0, rel=2e-3)
    # lower dose is noisier relative to the truth
    err = [float(torch.linalg.norm(a.noisy[i] - a.target[i]) / torch.linalg.norm(a.target[i])) for i in range(2)]
    assert err[0] > err[1]
    other = generate_pairs(DenoisingDataConfig(num_phantoms=1, dose_fractions=(0.02,), seed=8))
    assert not torch.equal(a.target[:1], other.target)


def test_bnn_beats_noisy_input_and_samples_its_weights(splits, svi_model):
    """(The voxel-wise rank correlation of this small SVI denoiser's std with its error is ~0 on held-out
    phantoms: -0.0007 / +0.003 after 30 / 60 epochs, RMSE in the lowest- vs highest-std quartile 0.084 vs
    0.079. An earlier assertion rho > 0 passed by chance (0.025); the std does not track the error per
    voxel here, which is why the calibrated variants of docs/heldout_uq.md are needed.)"""
    _, test = splits
    post = svi_model.predict(test.noisy, num_samples=16, seed=0)
    mask = test.mask
    mean = post.predictive_mean
    nrmse_in = torch.linalg.norm((test.noisy - test.target)[mask]) / torch.linalg.norm(test.target[mask])
    nrmse_out = torch.linalg.norm((mean - test.target)[mask]) / torch.linalg.norm(test.target[mask])
    assert nrmse_out < 0.8 * nrmse_in
    assert float(post.epistemic_std[mask].mean()) > 0  # weights are sampled
    assert torch.all(post.total_std >= post.aleatoric_std)


def test_conformal_recalibration_reaches_nominal_coverage_on_held_out_images(splits, svi_model):
    """Held-out voxels split at random into calibration and test halves (exchangeable by construction)."""
    _, held_out = splits
    post = svi_model.predict(held_out.noisy, num_samples=16, seed=1)
    target, mean, std = (x[held_out.mask] for x in (held_out.target, post.predictive_mean, post.total_std))
    perm = torch.randperm(target.numel(), generator=torch.Generator().manual_seed(0))
    calib, test = perm[: target.numel() // 2], perm[target.numel() // 2 :]
    shape = (1, 1, -1)
    scales = cal.conformal_scales(target[calib].view(shape), mean[calib].view(shape), std[calib].view(shape))
    after = cal.coverage_curve(
        target[test].view(shape), mean=mean[test].view(shape), std=std[test].view(shape), scale=scales
    )
    for nominal, observed in after.items():
        assert observed >= nominal - 0.01, (nominal, observed)
    assert cal.calibration_error(after) < 0.02


def test_ais_denoiser_reports_ess_and_predicts(splits):
    train, test = splits
    config = DenoiserConfig(method="ais", network=SMALL_NET, epochs=3, ais_iterations=4, ais_images=8, seed=0)
    model = make_denoiser(config)
    info = model.fit(train.subset(range(8)))
    assert 1.0 <= info["ess"] <= info["num_weighted_samples"]
    assert len(info["ess_per_iteration"]) == 4
    post = model.predict(test.noisy[:2], num_samples=8)
    assert post.mean.shape == (8, 2, 64, 64) and torch.isfinite(post.total_std).all()
    assert float(post.epistemic_std.mean()) > 0


@pytest.mark.parametrize("method", ["cnn", "mc_dropout", "ensemble", "svi", "ais"])
def test_save_load_gives_identical_predictions(method, tmp_path, splits):
    _, test = splits
    config = DenoiserConfig(method=method, network=SMALL_NET, ensemble_size=2, seed=5)
    model = make_denoiser(config)  # untrained weights are enough to check the round trip
    before = model.predict(test.noisy[:2], num_samples=4, seed=11)
    save_denoiser(model, tmp_path / "m")
    loaded = load_denoiser(tmp_path / "m")
    after = loaded.predict(test.noisy[:2], num_samples=4, seed=11)
    assert torch.equal(before.mean, after.mean) and torch.equal(before.var, after.var)


def test_tampered_or_mismatched_checkpoint_is_refused(tmp_path, svi_model):
    folder = save_denoiser(svi_model, tmp_path / "m")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_denoiser(folder)
    folder = save_denoiser(svi_model, tmp_path / "m2")
    record = json.loads((folder / "config.json").read_text())
    record["config"]["network"]["width"] = 8  # architecture no longer matches the tensors
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="shape"):
        load_denoiser(folder)
    record["config"]["method"] = "nonsense"
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="unknown denoiser method"):
        load_denoiser(folder)
    with pytest.raises(FileNotFoundError):
        load_denoiser(tmp_path / "missing")
    assert np.isfinite(svi_model.info["train_time_s"])
