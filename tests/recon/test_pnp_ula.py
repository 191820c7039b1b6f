"""PnP-ULA: a tiny Poisson problem against quadrature, positivity, the shipped denoiser, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petuq_sirf.recon.pnp_ula import PnPULAConfig, pnp_ula


class MatrixModel:
    """A dense-matrix acquisition model ``ybar = A x + b`` with images ``(1, 1, n)`` and data ``(1, 1, m)``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a = a
        self.b = b
        self.image_shape = (1, 1, a.shape[1])
        self.data_shape = (1, 1, a.shape[0])
        self.voxel_size_mm = (1.0, 1.0, 1.0)
        self.device = torch.device("cpu")

    @property
    def multiplicative(self) -> torch.Tensor:
        return torch.ones(self.data_shape, dtype=self.a.dtype)

    @property
    def additive(self) -> torch.Tensor:
        return self.b.reshape(self.data_shape)

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direct(x) + self.additive

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.a

    def sensitivity(self) -> torch.Tensor:
        return self.adjoint(torch.ones(self.data_shape, dtype=self.a.dtype))


def _tiny_problem():
    a = torch.tensor([[1.0, 0.3], [0.2, 1.0], [0.5, 0.5]], dtype=torch.float64) * 4
    b = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    y = torch.tensor([[[3.0, 0.0, 2.0]]], dtype=torch.float64)  # second voxel close to zero activity
    return MatrixModel(a, b), y


def _gaussian_denoiser(mu: float, var: float, eps: float):
    """MMSE denoiser of the prior N(mu, var I) at noise variance eps (linear, firmly nonexpansive)."""
    w = var / (var + eps)
    return lambda u: mu + w * (u - mu)


def test_pnp_ula_on_a_tiny_poisson_problem_matches_quadrature_and_stays_non_negative():
    model, y = _tiny_problem()
    x_init = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)  # scale c = 0.5
    c, sigma, mu, var = 0.5, 0.5, 1.0, 1.0
    den = _gaussian_denoiser(mu, var, sigma**2)
    cfg = PnPULAConfig(
        num_samples=150, burn_in=400, thinning=20, num_chains=64, denoiser_sigma=sigma, step_fraction=0.3
    )
    res = pnp_ula(model, y, den, cfg, x_init=x_init)
    samples = res.summary.samples
    assert (samples >= 0).all() and (res.chain.final >= 0).all()
    assert float(samples[..., 1].min()) < 0.01  # the boundary x = 0 was visited and reflected
    # exact posterior on x >= 0: Poisson likelihood times the Gaussian N(c mu, c^2 (var + eps)) of
    # the denoiser's Tweedie score (alpha = 1), by quadrature on a grid
    grid = torch.linspace(0, 3, 601, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([gx, gy], -1).reshape(-1, 1, 1, 2)
    ybar = model.forward(pts)
    loglik = (y * torch.log(ybar) - ybar).sum((-3, -2, -1))
    prior_var = c**2 * (var + sigma**2)
    logp = loglik - ((pts.reshape(-1, 2) - c * mu) ** 2).sum(1) / (2 * prior_var)
    w = torch.softmax(logp, 0)
    post_mean = (w[:, None] * pts.reshape(-1, 2)).sum(0)
    post_var = (w[:, None] * (pts.reshape(-1, 2) - post_mean) ** 2).sum(0)
    ess = float(res.chain.ess.min())
    se = (post_var / max(ess, 1.0)).sqrt()
    got = res.summary.mean.reshape(2).double()
    assert ((got - post_mean).abs() < 5 * se + 0.01 * post_mean).all(), (got, post_mean, se)
    assert torch.allclose(res.summary.std.reshape(2).double() ** 2, post_var, rtol=0.15), (res.summary.std, post_var)
    # the MAP (mode) is not the mean here: the posterior of the low voxel is skewed by x >= 0
    mode = pts.reshape(-1, 2)[logp.argmax()]
    assert float(got[1]) > float(mode[1])
    assert res.settings["lipschitz_prior"] <= 1.0 + 1e-9
    assert res.settings["diagnostics"]["rhat_max"] < 1.1


def test_background_floor_keeps_the_gradient_finite_without_background():
    model, y = _tiny_problem()
    model.b = torch.zeros(3, dtype=torch.float64)  # no randoms/scatter: y / ybar unbounded at x = 0
    den = _gaussian_denoiser(1.0, 1.0, 0.25)
    cfg = PnPULAConfig(num_samples=20, burn_in=50, thinning=2, num_chains=4, denoiser_sigma=0.5)
    res = pnp_ula(model, y, den, cfg, x_init=torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    assert res.settings["bins_floored"] == 3 and res.settings["background_floor"] > 0
    assert np.isfinite(res.settings["step_size"]) and (res.summary.samples >= 0).all()


def test_support_holds_outside_voxels_at_zero():
    from petuq_sirf.recon.pnp_ula import body_support

    model, y = _tiny_problem()
    den = _gaussian_denoiser(1.0, 1.0, 0.25)
    cfg = PnPULAConfig(num_samples=20, burn_in=50, thinning=2, num_chains=4, denoiser_sigma=0.5)
    support = torch.tensor([[[True, False]]])
    res = pnp_ula(model, y, den, cfg, x_init=torch.tensor([[[0.5, 0.5]]], dtype=torch.float64), support=support)
    assert (res.summary.samples[..., 1] == 0).all() and (res.summary.samples[..., 0] > 0).any()
    assert res.settings["support_voxels"] == 1
    with pytest.raises(ValueError, match="empty"):
        pnp_ula(
            model, y, den, cfg, x_init=torch.ones(1, 1, 2, dtype=torch.float64), support=~torch.ones(1, 1, 2).bool()
        )
    mu = torch.zeros(1, 9, 9)
    mu[0, 4, 4] = 0.096
    mask = body_support(mu, dilation_voxels=2)
    assert int(mask.sum()) == 25 and bool(mask[0, 2, 2]) and not bool(mask[0, 1, 4])


def test_config_is_validated():
    for bad in ({"num_chains": 0}, {"denoiser_sigma": 0}, {"lipschitz": "x"}, {"step_fraction": 3}):
        with pytest.raises(ValueError):
            PnPULAConfig(**bad)


@pytest.fixture(scope="module")
def low_dose_2d(layout_2d, image_2d):
    from petuq_sirf.simulation import SimulationConfig, random_ellipses_phantom, simulate

    phantom = random_ellipses_phantom(image_2d, np.random.default_rng(99), lesion_probability=1.0)
    return simulate(phantom, layout_2d, SimulationConfig(true_counts=5e4, seed=1))


def test_pnp_ula_with_the_shipped_denoiser_has_data_driven_spread(low_dose_2d):
    """On 2D low-dose data the posterior std is of the order of the error, unlike the weight-draw spread."""
    from petuq_sirf.recon.weights import load_network as load_weights

    net, _, _ = load_weights("pnp-admm")
    sim = low_dose_2d
    model = sim.acquisition_model()
    cfg = PnPULAConfig(num_samples=10, burn_in=150, thinning=3, num_chains=2, init_admm_iterations=20)
    res = pnp_ula(model, sim.prompts, net, cfg)
    body = sim.truth > 0
    std = res.summary.std[body]
    err = (res.summary.mean - sim.truth)[body]
    assert (res.summary.samples >= 0).all()
    ratio = float(std.mean() / err.pow(2).mean().sqrt())
    assert 0.3 < ratio < 3.0, ratio  # the PnP-ADMM weight-draw spread is about 1/20 of the error
    assert res.settings["diagnostics"]["chains"] == 2


def test_cli_pnp_ula(tmp_path):
    from petuq_sirf.cli.main import main

    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "ellipses", "--counts", "5e4", "--seed", "3", "--out", str(acq)]) == 0
    out = tmp_path / "ula"
    argv = ["reconstruct", str(acq), "--method", "pnp-ula", "--samples", "8", "--iterations", "40", "--out", str(out)]
    assert main(argv + ["--chains", "2", "--thinning", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "pnp-ula" and metrics["spread"].startswith("posterior")
    assert "rhat_max" in metrics["diagnostics"] and metrics["uq"]["coverage"]
    for name in ("mean", "std", "lower_90", "upper_90"):
        assert (out / f"{name}.nii.gz").is_file()
    assert main(argv[:-2] + ["--samples", "1", "--out", str(tmp_path / "bad")]) == 2


def test_cli_pnp_ula_resumes_a_killed_run_and_refuses_another_runs_state(tmp_path, monkeypatch, capsys):
    """A run killed after its state was saved (step 30 of 56) resumes when the same command is run again and
    writes exactly the images of an uninterrupted run; a finished run leaves no state; a state file from a
    run with other settings is refused in one line (exit code 2) and left in place."""
    import torch

    from petuq_sirf.cli.main import main
    from petuq_sirf.inference import langevin
    from petuq_sirf.io.image_io import read_image
    from petuq_sirf.pipelines.reconstruction import PNP_ULA_STATE

    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "ellipses", "--counts", "5e4", "--seed", "3", "--out", str(acq)]) == 0
    base = ["reconstruct", str(acq), "--method", "pnp-ula", "--samples", "8", "--iterations", "40", "--chains", "2"]
    base += ["--thinning", "4", "--checkpoint-every", "15", "--quiet"]  # 40 + 4 x 4 = 56 steps per chain
    assert main(base + ["--out", str(tmp_path / "whole")]) == 0
    assert not (tmp_path / "whole" / PNP_ULA_STATE).exists()

    real_step, calls = langevin.langevin_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 35:
            raise KeyboardInterrupt("job killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(langevin, "langevin_step", dying_step)
    assert main(base + ["--out", str(tmp_path / "killed")]) == 130  # Ctrl-C / a killed job
    assert (tmp_path / "killed" / PNP_ULA_STATE).is_file()
    counted = {"n": 0}

    def counting_step(*args, **kwargs):
        counted["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(langevin, "langevin_step", counting_step)
    assert main(base + ["--out", str(tmp_path / "killed")]) == 0
    assert counted["n"] == 56 - 30  # resumed from the state of step 30, not started again
    assert not (tmp_path / "killed" / PNP_ULA_STATE).exists()
    for name in ("mean", "std"):
        a = torch.as_tensor(read_image(tmp_path / "whole" / f"{name}.nii.gz")[0])
        b = torch.as_tensor(read_image(tmp_path / "killed" / f"{name}.nii.gz")[0])
        assert torch.equal(a, b), name

    monkeypatch.setattr(langevin, "langevin_step", dying_step)
    calls["n"] = 0
    assert main(base + ["--out", str(tmp_path / "other")]) == 130
    monkeypatch.setattr(langevin, "langevin_step", real_step)
    capsys.readouterr()
    assert main([*base[:-5], "--thinning", "2", *base[-3:], "--out", str(tmp_path / "other")]) == 2
    assert "other settings or data" in capsys.readouterr().err
    assert (tmp_path / "other" / PNP_ULA_STATE).is_file()  # not deleted: the user decides
