"""PnP-ADMM with a firmly nonexpansive denoiser: fusion step, Jacobian bound, convergence, posterior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petuq_sirf.inference.weight_posterior import SVIConfig
from petuq_sirf.recon import gaussian_postfilter, osem
from petuq_sirf.recon import weights as recon_weights
from petuq_sirf.recon.nonexpansive import (
    NonexpansiveTrainingConfig,
    ResidualDenoiser,
    clean_ellipse_images,
    fit_denoiser_posterior,
    jacobian_spectral_norm,
    reflected,
    train_nonexpansive_denoiser,
)
from petuq_sirf.recon.pnp_admm import PnPADMMConfig, em_quadratic_fusion, pnp_admm, pnp_admm_posterior
from petuq_sirf.simulation import SimulationConfig, random_ellipses_phantom, simulate
from petuq_sirf.uq import nrmse


@pytest.fixture(scope="module")
def shipped():
    """The shipped denoiser (trained by ``petuq train-pnp-denoiser``, see docs/reconstruction_uq.md)."""
    net, posterior, info = recon_weights.load_network("pnp-admm")
    assert info["kind"] == "pnp-denoiser" and info["training"]["penalty"] > 0
    return net, posterior


@pytest.fixture(scope="module")
def low_dose(layout_2d, image_2d):
    phantom = random_ellipses_phantom(image_2d, np.random.default_rng(99), lesion_probability=1.0)
    return simulate(phantom, layout_2d, SimulationConfig(true_counts=5e4, seed=1))


def test_fusion_is_the_minimiser_of_the_surrogate():
    g = torch.Generator().manual_seed(0)
    x_em = torch.rand(50, generator=g, dtype=torch.float64) * 3
    target = torch.randn(50, generator=g, dtype=torch.float64) * 2  # negative targets too
    weight = torch.rand(50, generator=g, dtype=torch.float64) * 5
    x = em_quadratic_fusion(x_em, target, weight)
    grid = torch.linspace(1e-4, 10, 200001, dtype=torch.float64).unsqueeze(1)
    objective = grid - x_em * torch.log(grid) + weight / 2 * (grid - target) ** 2
    brute = grid[objective.argmin(0), 0]
    assert (x > 0).all()
    assert torch.allclose(x, brute, atol=1e-4)
    assert torch.allclose(em_quadratic_fusion(x_em, target, torch.zeros(50, dtype=torch.float64)), x_em)
    assert torch.allclose(
        em_quadratic_fusion(x_em, target, torch.full((50,), float("inf"), dtype=torch.float64)), target.clamp_min(0)
    )


def test_power_iteration_finds_the_spectral_norm_of_a_linear_map():
    g = torch.Generator().manual_seed(0)
    mat = torch.randn(16, 16, generator=g, dtype=torch.float64)
    norm = jacobian_spectral_norm(lambda x: x @ mat.T, torch.randn(3, 16, dtype=torch.float64), iterations=200)
    assert torch.allclose(norm, torch.linalg.matrix_norm(mat, ord=2).expand(3), rtol=1e-4)


def test_trained_denoiser_is_firmly_nonexpansive_on_test_images(shipped, image_2d):
    net, _ = shipped
    clean = clean_ellipse_images(image_2d, 2, seed=123)  # phantoms not in the training set (seed 0)
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    for images in (clean, noisy):
        norms = jacobian_spectral_norm(reflected(net), images, iterations=15)
        assert (norms <= 1.01).all(), norms
    with torch.no_grad():
        assert float(((net(noisy) - clean) ** 2).mean()) < 0.6 * float(((noisy - clean) ** 2).mean())


def test_penalised_training_pulls_the_jacobian_norm_below_one(image_2d):
    cfg = NonexpansiveTrainingConfig(
        num_images=4, num_steps=20, batch_size=4, patch=16, penalty_batch=1, power_iterations=3, seed=3
    )
    res = train_nonexpansive_denoiser(image_2d, cfg)
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:3])
    assert len(res.jacobian_norms) == 20 and max(res.jacobian_norms[-5:]) <= 1.02
    untrained = jacobian_spectral_norm(reflected(ResidualDenoiser()), torch.rand(2, 1, 16, 16), iterations=20)
    assert (untrained > 0.5).all()  # the estimate is not trivially small


def test_pnp_admm_converges_and_beats_osem(shipped, low_dose, image_2d):
    model = low_dose.acquisition_model()
    with torch.no_grad():
        res = pnp_admm(model, low_dose.prompts, shipped[0], PnPADMMConfig(num_iterations=80, inner_iterations=3))
    r = np.array(res.residuals)
    assert len(r) == 80 and np.isfinite(r).all()
    assert r[0] / r[-1] >= 100, r[[0, 40, -1]]
    assert (res.image >= 0).all()
    ref = osem(model, low_dose.prompts, 5, 8).image
    best_osem = min(
        float(nrmse(gaussian_postfilter(ref, f, image_2d.voxel_size_mm), low_dose.truth)) for f in (4, 6, 8)
    )
    assert float(nrmse(res.image, low_dose.truth)) < best_osem


def test_denoiser_posterior_fit_runs_from_the_point_weights(shipped, image_2d):
    net, _ = shipped
    posterior, losses = fit_denoiser_posterior(
        net,
        image_2d,
        NonexpansiveTrainingConfig(num_images=4, batch_size=2, patch=24, penalty_batch=1, power_iterations=2),
        SVIConfig(num_steps=4, init_scale=1e-3, learn_loc=False),
    )
    assert np.isfinite(losses).all()
    assert all((s > 0).all() for s in posterior.scale.values())
    point = dict(net.named_parameters())
    assert all(torch.equal(v, point[k]) for k, v in posterior.loc.items())


def test_pnp_posterior_samples_vary_and_stay_nonexpansive(shipped, low_dose, image_2d):
    net, posterior = shipped
    model = low_dose.acquisition_model()
    post = pnp_admm_posterior(
        model,
        low_dose.prompts,
        net,
        posterior,
        num_samples=2,
        config=PnPADMMConfig(num_iterations=15, inner_iterations=2),
        jacobian_iterations=5,
    )
    assert post.summary.samples.shape == (2, *image_2d.shape)
    assert float(post.summary.std.max()) > 0
    assert max(post.jacobian_norms) <= 1.05
    boot = pnp_admm_posterior(
        model,
        low_dose.prompts,
        net,
        posterior,
        num_samples=2,
        config=PnPADMMConfig(num_iterations=15, inner_iterations=2),
        jacobian_iterations=5,
        bootstrap=True,
    )
    body = low_dose.regions["background"]
    assert float(boot.summary.std[body].mean()) > float(post.summary.std[body].mean())  # data spread adds


def test_pnp_admm_rejects_bad_settings(low_dose):
    with pytest.raises(ValueError, match="rho_rel"):
        PnPADMMConfig(rho_rel=0)
    with pytest.raises(ValueError, match="prompts"):
        pnp_admm(low_dose.acquisition_model(), torch.ones(2, 3, 4), lambda v: v)


def test_train_pnp_denoiser_on_anatomical_families(tmp_path, image_2d, capsys):
    """--families: the training images are the families' train-seed phantoms (lesions included), the Jacobian
    check runs on their calibration seeds, the record names the families; unknown names are one-line errors."""
    from petuq_sirf.cli.main import main
    from petuq_sirf.recon.nonexpansive import clean_family_images
    from petuq_sirf.simulation.phantom_families import family_phantom, seeds

    imgs = clean_family_images(image_2d, ["thorax", "brain"], 2, "train")
    assert imgs.shape == (4, *image_2d.shape)
    assert torch.allclose(imgs.mean(dim=(-3, -2, -1)), torch.ones(4, dtype=imgs.dtype), atol=1e-5)
    first = family_phantom("thorax", image_2d, seeds("train", 1)[0]).activity
    assert torch.allclose(imgs[0], first / first.mean())
    with pytest.raises(ValueError, match="unknown phantom families"):
        clean_family_images(image_2d, ["liver"], 1)
    out = tmp_path / "den"
    args = ["train-pnp-denoiser", "--families", "thorax,texture", "--images", "2", "--steps", "3"]
    assert main([*args, "--svi-steps", "0", "--out", str(out)]) == 0
    _, posterior, info = recon_weights.load_network("pnp-admm", out)
    assert info["families"] == ["thorax", "texture"] and posterior is None
    assert info["jacobian_norm_2D_minus_I_on_test"] > 0
    assert main(["train-pnp-denoiser", "--families", "liver", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown phantom families" in capsys.readouterr().err


def test_shipped_family_prior_is_selectable_by_name_and_was_learned_without_the_brain():
    net, _, info = recon_weights.load_network("pnp-admm", "pnp-families")
    assert info["kind"] == "pnp-denoiser" and "brain" not in info["families"]
    assert set(info["families"]) == {"thorax", "ellipses", "texture"}
    x = torch.rand(1, 1, 16, 16)
    assert net(x).shape == x.shape
