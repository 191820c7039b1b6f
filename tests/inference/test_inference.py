"""SVI and PMC adaptive importance sampling recover the analytic posterior of Bayesian linear regression."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from petuq_sirf.inference.ais import PMCConfig, effective_sample_size, pmc_sample
from petuq_sirf.inference.svi import bayesianize, fit_svi, guide_posterior, make_guide

N, D, SIGMA, TAU = 60, 3, 0.5, 1.0


def _problem():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(N, D, generator=g, dtype=torch.float64))
    x = q * torch.tensor([3.0, 5.0, 8.0], dtype=torch.float64)  # orthogonal columns: diagonal posterior
    w = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    y = x @ w + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    precision = x.T @ x / SIGMA**2 + torch.eye(D, dtype=torch.float64) / TAU**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / SIGMA**2
    return x, y, mean, cov


def _log_target(x, y):
    def log_target(theta):  # unnormalised: likelihood and prior without constants
        return -((y[None] - theta @ x.T) ** 2).sum(-1) / (2 * SIGMA**2) - (theta**2).sum(-1) / (2 * TAU**2)

    return log_target


def test_pmc_recovers_conjugate_posterior_and_evidence():
    x, y, mean, cov = _problem()
    log_target = _log_target(x, y)
    for diagonal in (True, False):
        config = PMCConfig(num_proposals=10, samples_per_proposal=50, iterations=16, sigma_prop=0.3, diagonal=diagonal)
        result = pmc_sample(log_target, torch.zeros(D), config)
        sd = cov.diagonal().sqrt()
        assert ((result.mean - mean).abs() / sd).max() < 0.1
        assert ((result.var / cov.diagonal()) - 1).abs().max() < 0.15
        m = result.samples.shape[0]
        assert 0.3 * m < result.ess <= m  # adapted proposals: most samples count
        assert len(result.ess_per_iteration) == 16
        # evidence: Z = int exp(log_target) = exp(log_target(mean)) (2 pi)^(d/2) |cov|^(1/2)
        log_z = float(log_target(mean[None])[0]) + 0.5 * D * math.log(2 * math.pi) + 0.5 * torch.logdet(cov)
        assert abs(result.log_evidence - float(log_z)) < 0.2


def test_pmc_resampling_and_ess_helpers():
    x, y, mean, cov = _problem()
    result = pmc_sample(_log_target(x, y), mean, PMCConfig(iterations=4, sigma_prop=0.1))
    particles = result.resample(500, torch.Generator().manual_seed(0))
    assert particles.shape == (500, D)
    assert ((particles.mean(0) - mean).abs() / cov.diagonal().sqrt()).max() < 0.3
    assert abs(effective_sample_size(torch.zeros(10)) - 10.0) < 1e-9
    assert abs(effective_sample_size(torch.tensor([0.0, -1e9])) - 1.0) < 1e-9


def test_svi_recovers_conjugate_posterior():
    x, y, mean, cov = _problem()
    xf, yf = x.float(), y.float()
    regression = bayesianize(nn.Linear(D, 1, bias=False), prior_scale=TAU)

    def model(xb, yb, idx):
        f = regression(xb).squeeze(-1)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("obs", dist.Normal(f, SIGMA), obs=yb)

    def batches():  # minibatches of 30: the plate scales the likelihood by N / 30
        g = torch.Generator().manual_seed(1)
        while True:
            idx = torch.randperm(N, generator=g)[:30]
            yield xf[idx], yf[idx], idx

    pyro.set_rng_seed(0)
    guide = make_guide(model, init_scale=0.1)
    losses = fit_svi(model, guide, batches(), 2000, lr=0.03, lr_final=0.001)
    assert losses[-1] < losses[0]
    locs, scales = guide_posterior(guide)
    sd = cov.diagonal().sqrt().float()
    assert ((locs["weight"][0] - mean.float()).abs() / sd).max() < 0.5
    assert ((scales["weight"][0] / sd) - 1).abs().max() < 0.2
