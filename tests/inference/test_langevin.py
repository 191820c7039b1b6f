"""Langevin machinery: exact Gaussian posterior, diagnostics, reflection."""

from __future__ import annotations

import math

import pytest
import torch

from petuq_sirf.inference.langevin import (
    LangevinConfig,
    RunningMoments,
    effective_sample_size,
    langevin_sample,
    power_iteration,
    split_rhat,
)


def _gaussian_problem():
    """Gaussian likelihood y = H x + n and a Gaussian prior given through its linear MMSE denoiser.

    The denoiser of the prior N(mu, S) at noise variance eps is D(x) = mu + S (S + eps I)^-1 (x - mu),
    so (D(x) - x) / eps = -(S + eps I)^-1 (x - mu) (Tweedie): PnP-ULA's target is then exactly the
    Gaussian posterior with prior N(mu, S + eps I).
    """
    g = torch.Generator().manual_seed(0)
    d, m = 6, 8
    h = torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    sigma_n = 1.0
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    s = q @ q.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    eps = 0.1
    x_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = h @ x_true + sigma_n * torch.randn(m, generator=g, dtype=torch.float64)
    w = s @ torch.linalg.inv(s + eps * torch.eye(d, dtype=torch.float64))

    def denoiser(x):
        return mu + (x - mu) @ w.T

    def grad(x):
        return (y - x @ h.T) @ h / sigma_n**2 + (denoiser(x) - x) / eps

    precision = h.T @ h / sigma_n**2 + torch.linalg.inv(s + eps * torch.eye(d, dtype=torch.float64))
    cov = torch.linalg.inv(precision)
    mean = cov @ (h.T @ y / sigma_n**2 + torch.linalg.solve(s + eps * torch.eye(d, dtype=torch.float64), mu))
    return grad, precision, mean, cov


def test_ula_with_a_linear_denoiser_recovers_the_gaussian_posterior():
    grad, precision, mean, cov = _gaussian_problem()
    evals = torch.linalg.eigvalsh(precision)
    step = 0.05 / float(evals.max())  # ULA variance bias <= step * lambda_max / 2 = 2.5 %
    relax = int(1 / (step * float(evals.min())))  # one e-folding time of the slowest direction
    chains = 256
    cfg = LangevinConfig(num_samples=50, burn_in=4 * relax, thinning=max(1, relax // 5), seed=1)
    x0 = torch.zeros(chains, mean.numel(), dtype=torch.float64) + 3.0  # far from the mode
    res = langevin_sample(grad, x0, step, cfg)
    var = torch.diagonal(cov)
    ess = res.ess[1:]  # traced coordinates: all six (trace_points >= d), after the image-mean trace
    assert (ess > 1000).all(), ess
    se = (var / 1000).sqrt()
    assert ((res.mean - mean).abs() < 5 * se).all(), (res.mean, mean)
    assert torch.allclose(res.variance, var, rtol=0.1), (res.variance, var)
    assert (res.rhat < 1.2).all()  # 50 correlated states per chain: R-hat is noisy
    # the covariance too (pooled stored samples)
    flat = res.samples.reshape(-1, mean.numel())
    emp = torch.cov(flat.T)
    assert (emp - cov).abs().max() < 0.1 * var.max()


def test_ula_without_prior_drift_is_wrong_far_from_the_posterior():
    """Guard against a test that would pass for any sampler: a wrong gradient sign is detected."""
    grad, precision, mean, cov = _gaussian_problem()
    step = 0.05 / float(torch.linalg.eigvalsh(precision).max())
    res = langevin_sample(
        lambda x: 0.5 * grad(x), torch.zeros(64, mean.numel(), dtype=torch.float64), step, LangevinConfig(200, 2000, 5)
    )
    assert not torch.allclose(res.variance, torch.diagonal(cov), rtol=0.3)


def test_reflected_chain_stays_non_negative_and_samples_a_half_normal():
    # target: N(0, 1) restricted to x >= 0, whose mean is sqrt(2 / pi)
    res = langevin_sample(
        lambda x: -x, torch.ones(256, 1, dtype=torch.float64), 0.02, LangevinConfig(200, 500, 10), reflect=True
    )
    assert (res.samples >= 0).all() and (res.final >= 0).all()
    assert abs(float(res.mean) - math.sqrt(2 / math.pi)) < 0.03
    assert abs(float(res.variance) - (1 - 2 / math.pi)) < 0.03


def test_ess_and_rhat_on_known_chains():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 2000, generator=g, dtype=torch.float64)
    ess = float(effective_sample_size(iid)[0])
    assert 0.8 * 8000 < ess < 1.2 * 8000
    phi = 0.9
    ar = torch.zeros(4, 4000, dtype=torch.float64)
    noise = torch.randn(4, 4000, generator=g, dtype=torch.float64)
    for t in range(1, 4000):
        ar[:, t] = phi * ar[:, t - 1] + noise[:, t]
    expected = 4 * 4000 * (1 - phi) / (1 + phi)
    assert 0.7 * expected < float(effective_sample_size(ar)[0]) < 1.3 * expected
    assert float(split_rhat(iid)[0]) < 1.01
    shifted = iid + torch.arange(4, dtype=torch.float64)[:, None]  # chains in different places
    assert float(split_rhat(shifted)[0]) > 1.5
    with pytest.raises(ValueError):
        effective_sample_size(torch.zeros(1, 3))


def test_running_moments_and_power_iteration():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(50, 3, 4, generator=g, dtype=torch.float64)
    rm = RunningMoments()
    for x in xs:
        rm.update(x)
    assert torch.allclose(rm.mean, xs.mean(0)) and torch.allclose(rm.variance(), xs.var(0))
    batched = RunningMoments()
    for chunk in xs.split(7):
        batched.update_batch(chunk)
    assert torch.allclose(batched.mean, xs.mean(0)) and torch.allclose(batched.variance(), xs.var(0))
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    spd = a @ a.T
    lam = power_iteration(lambda v: v @ spd, torch.zeros(5, dtype=torch.float64), 300)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(spd).max()), rel=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        LangevinConfig(num_samples=0)
    with pytest.raises(ValueError):
        langevin_sample(lambda x: -x, torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError):
        langevin_sample(lambda x: -x, torch.zeros(3), 0.1)
    with pytest.raises(ValueError):
        langevin_sample(lambda x: -x, torch.zeros(2, 3), 0.1, preconditioner=-1.0)


def test_a_resumed_run_equals_an_uninterrupted_one_and_other_runs_are_refused(tmp_path):
    """Save every 30 steps; a 'crash' at step 100 (after the save at 90) and a rerun with the same
    checkpoint give exactly the result of one uninterrupted run; the finished run removes its state; a
    state file of another run (other settings) is refused in one line, a corrupt one too."""
    from petuq_sirf.inference.langevin import ChainCheckpoint
    from petuq_sirf.io.resumable import ResumeError

    prec = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)

    def grad(x):
        return -(x - 1.0) * prec

    cfg = LangevinConfig(num_samples=20, burn_in=50, thinning=4, max_stored=8, seed=3)  # 130 steps
    x0 = torch.zeros(3, 3, dtype=torch.float64)
    pre = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    full = langevin_sample(grad, x0, 0.1, cfg, preconditioner=pre, reflect=True)

    ckpt = ChainCheckpoint(tmp_path / "state.pt", every=30, fingerprint={"target": "gauss", "data": 1})
    calls = {"n": 0}

    def crashing(x):
        calls["n"] += 1
        if calls["n"] > 100:
            raise KeyboardInterrupt("killed")
        return grad(x)

    with pytest.raises(KeyboardInterrupt):
        langevin_sample(crashing, x0, 0.1, cfg, preconditioner=pre, reflect=True, checkpoint=ckpt)
    assert ckpt.path.is_file()  # the state of step 90 survived the crash
    calls["n"] = 0
    resumed = langevin_sample(
        lambda x: (calls.__setitem__("n", calls["n"] + 1), grad(x))[1],
        x0,
        0.1,
        cfg,
        preconditioner=pre,
        reflect=True,
        checkpoint=ckpt,
    )
    assert calls["n"] == 130 - 90  # only the steps after the saved state were run again
    for name in ("mean", "variance", "chain_means", "samples", "traces", "final"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name
    assert not ckpt.path.exists()  # finished: nothing left to resume

    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        langevin_sample(crashing, x0, 0.1, cfg, preconditioner=pre, reflect=True, checkpoint=ckpt)
    other = ChainCheckpoint(ckpt.path, every=30, fingerprint={"target": "gauss", "data": 2})
    with pytest.raises(ResumeError, match="other settings or data"):
        langevin_sample(grad, x0, 0.1, cfg, preconditioner=pre, reflect=True, checkpoint=other)
    with pytest.raises(ResumeError, match="other settings or data"):
        langevin_sample(grad, x0, 0.2, cfg, preconditioner=pre, reflect=True, checkpoint=ckpt)  # other step size
    torch.save({"x": x0, "format": "petuq-epoch-checkpoint", "version": 1}, ckpt.path)  # a training checkpoint
    with pytest.raises(ResumeError, match="is not a petuq-chain-state file"):
        langevin_sample(grad, x0, 0.1, cfg, preconditioner=pre, reflect=True, checkpoint=ckpt)
    ckpt.path.write_bytes(b"\x00" * 16)
    with pytest.raises(ResumeError, match="chain state .* cannot be read"):
        langevin_sample(grad, x0, 0.1, cfg, preconditioner=pre, reflect=True, checkpoint=ckpt)
    with pytest.raises(ValueError, match="checkpoint interval"):
        ChainCheckpoint(ckpt.path, every=0)
