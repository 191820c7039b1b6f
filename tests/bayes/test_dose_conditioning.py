"""Dose-conditioned Bayesian denoisers: the same network predicts a smaller std at higher counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petuq_sirf.bayes import NetworkConfig
from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
from petuq_sirf.bayes.networks import HeteroscedasticCNN
from petuq_sirf.bayes.training_data import DenoisingDataset
from petuq_sirf.recon.nonexpansive import clean_ellipse_images
from petuq_sirf.scanner import ImageGeometry


def _pairs(n: int, seed: int) -> DenoisingDataset:
    """Ellipse images (mean 1) with Gaussian noise of relative std ``0.05 / sqrt(dose)``: the noise of a
    count image falls as 1/sqrt(counts). Doses 1 %, 10 % and 100 % of the standard dose."""
    image = ImageGeometry((1, 32, 32), (4.0, 4.0, 4.0))
    clean = clean_ellipse_images(image, n, seed=seed)[:, 0]
    doses = torch.tensor([0.01, 0.1, 1.0]).repeat(n)
    target = clean.repeat_interleave(3, 0)
    gen = torch.Generator().manual_seed(seed)
    noisy = target + 0.05 / doses.sqrt().view(-1, 1, 1) * torch.randn(target.shape, generator=gen)
    return DenoisingDataset(
        noisy, target, torch.ones_like(target, dtype=torch.bool), doses, torch.arange(n).repeat_interleave(3)
    )


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 threads on the busy shared cores
    net = NetworkConfig(width=8, dilations=(1, 2, 1), dose_input=True)
    den = make_denoiser(DenoiserConfig(method="cnn", network=net, epochs=150, batch_size=8, lr=5e-3, seed=0))
    den.fit(_pairs(8, seed=0))
    torch.set_num_threads(threads)
    return den


def _relative_std(den, image, dose) -> float:
    pred = den.predict(image, num_samples=1, seed=1, dose=dose)
    return float(pred.var.mean(0).sqrt().mean() / image.mean())


def test_same_network_predicts_a_smaller_std_at_higher_counts(trained):
    test = _pairs(1, seed=99)  # a phantom not in the training set, at 1 %, 10 %, 100 % dose
    stds = [_relative_std(trained, test.noisy[i : i + 1], float(test.dose[i])) for i in range(3)]
    assert stds[2] < stds[1] < stds[0], stds
    assert stds[2] < 0.5 * stds[0]
    # the dose input itself matters: the same image with a higher stated dose gets a smaller std
    assert _relative_std(trained, test.noisy[:1], 1.0) < _relative_std(trained, test.noisy[:1], 0.01)


def test_dose_is_required_and_validated(trained):
    img = torch.ones(1, 32, 32)
    with pytest.raises(ValueError, match="dose-conditioned"):
        trained.predict(img, 2)
    with pytest.raises(ValueError, match="> 0"):
        trained.predict(img, 2, dose=0.0)
    net = HeteroscedasticCNN(NetworkConfig(width=4, dilations=(1,), dose_input=True))
    mean, _ = net(torch.rand(3, 8, 8), torch.tensor([0.01, 0.1, 1.0]))
    assert mean.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="3 images"):
        net(torch.rand(3, 8, 8), torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="ais"):
        DenoiserConfig(method="ais", network=NetworkConfig(dose_input=True))
    assert np.isfinite(float(mean.detach().sum()))
