"""Unrolled network variants: the dose input (count-level awareness) and the DBFB regulariser."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.recon import weights as recon_weights
from petuq_sirf.recon.family_data import family_low_dose_set
from petuq_sirf.recon.lowdose import BatchedAcquisition, batched_mlem
from petuq_sirf.recon.unrolled import (
    UnrolledConfig,
    UnrolledFBSEM,
    UnrolledTrainingConfig,
    bayesian_parameter_names,
    predict_unrolled,
    train_unrolled,
)
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantom_families import family_phantom, seeds
from petuq_sirf.simulation.simulate import SimulationConfig, geometric_model, simulate


def _tiny_problem():
    scanner = get_scanner("test-2d").with_(detectors_per_ring=24, num_tangential_bins=10)
    layout = SinogramLayout(scanner)
    image = ImageGeometry((1, 8, 8), (4.0, 20.0, 20.0))
    g = torch.Generator().manual_seed(0)
    model = EmbeddedAcquisitionModel(
        layout,
        image,
        multiplicative=0.5 + torch.rand(layout.shape, generator=g),
        additive=0.2 * torch.rand(layout.shape, generator=g),
    )
    x = 0.5 + torch.rand(image.shape, generator=g)
    y = torch.poisson(model.forward(x), generator=g)
    return model, y, x


@pytest.mark.parametrize("regulariser", ["cnn", "dbfb"])
def test_the_dose_input_breaks_the_count_scale_equivariance_on_purpose(regulariser):
    """Without the dose input the network maps ``(a y, a b, a x0)`` to ``a`` times its output (it applies the
    same relative smoothing at every count level); with it, the output depends on the count level."""
    model, y, x0 = _tiny_problem()
    a = 20.0
    scaled = model.with_terms(model.multiplicative, a * model.additive)
    outs = {}
    for dose_input in (False, True):
        torch.manual_seed(0)
        cfg = UnrolledConfig(num_iterations=2, channels=4, depth=2, dose_input=dose_input, regulariser=regulariser)
        net = UnrolledFBSEM(cfg)
        if dose_input:
            with torch.no_grad():
                net.beta_slope.fill_(-1.0)
        with torch.no_grad():
            m1, lv1 = net(model, y, x0)
            m2, lv2 = net(scaled, a * y, a * x0)
        outs[dose_input] = (float((m2 / a - m1).abs().max() / m1.abs().max()), float((lv2 - lv1).abs().max()))
    assert outs[False][0] < 1e-4 and outs[False][1] < 1e-4, outs
    assert outs[True][0] > 1e-3 and outs[True][1] > 1e-3, outs  # >= 10x the equivariant tolerance


def test_noise_level_rises_with_the_count_level():
    sens = torch.tensor([0.0, 1.0, 10.0])
    n = UnrolledFBSEM.noise_level(sens, torch.tensor(2.0))
    assert n[0] < n[1] < n[2]
    assert float(n[2] - n[1]) == pytest.approx(float(np.log(10.0)) / 2, rel=1e-5)


@pytest.fixture(scope="module")
def family_sets(layout_2d, image_2d):
    geometric = geometric_model(layout_2d, image_2d)
    kw = {"counts_range": (2e4, 5e5)}
    train = family_low_dose_set(layout_2d, image_2d, ("thorax", "ellipses"), "train", 4, 5e4, geometric, **kw)
    val = family_low_dose_set(layout_2d, image_2d, ("thorax",), "train", 2, 5e4, geometric, start=4, **kw)
    return geometric, train, val


def test_counts_range_draws_log_uniform_counts_deterministically(layout_2d, image_2d, family_sets):
    geometric, train, _ = family_sets
    again = family_low_dose_set(
        layout_2d, image_2d, ("thorax", "ellipses"), "train", 4, 5e4, geometric, counts_range=(2e4, 5e5)
    )
    assert torch.equal(again.prompts, train.prompts)
    # expected trues between the bounds; prompts include 50 % more (randoms + scatter) on average
    totals = train.prompts.sum(dim=(1, 2, 3))
    assert float(totals.min()) > 2e4 and float(totals.max()) < 5e5 * 2
    assert float(totals.max() / totals.min()) > 3  # spread over the range, not one level
    with pytest.raises(ValueError, match="counts range"):
        family_low_dose_set(layout_2d, image_2d, ("thorax",), "train", 1, 5e4, geometric, counts_range=(5, 1))


def test_dbfb_network_trains_and_its_posterior_is_over_the_filters(family_sets):
    geometric, train, val = family_sets
    cfg = UnrolledTrainingConfig(num_steps=12, head_steps=4, svi_steps=4, batch_size=2, lr=2e-2, relative_loss=True)
    net_cfg = UnrolledConfig(num_iterations=2, regulariser="dbfb", dbfb_layers=3, dbfb_filters=8, dose_input=True)
    res = train_unrolled(train, geometric, cfg, net_cfg, val)
    assert res.val_losses[-1] < 0.99 * res.val_losses[0], res.val_losses  # 12 steps: a small but real gain
    assert bayesian_parameter_names(res.net) == ["regulariser.filters"]
    assert set(res.posterior.loc) == {"regulariser.filters"}
    pred = predict_unrolled(res.net, val.model(geometric), val.prompts, val.init, res.posterior, 3, seed=0)
    assert float(pred.epistemic_std.max()) > 0 and bool((pred.mean >= 0).all())


def test_unknown_regulariser_is_refused():
    with pytest.raises(ValueError, match="unknown unrolled regulariser"):
        UnrolledConfig(regulariser="unet")


def _test_case(layout, image, family: str, start: int, counts: float):
    """A test-seed phantom of ``family``, its simulated acquisition, the acquisition model and 10 MLEM iterations."""
    geometric = geometric_model(layout, image)
    seed = seeds("test", 1, start=start)[0]
    ph = family_phantom(family, image, seed)
    sim = simulate(ph, layout, SimulationConfig(true_counts=counts, seed=seed), model=geometric)
    bm = BatchedAcquisition(geometric, sim.multiplicative[None], sim.additive_true[None])
    x0 = batched_mlem(bm, sim.prompts[None], 10)[0]
    return ph, sim, geometric.with_terms(sim.multiplicative, sim.additive_true), x0


@pytest.mark.parametrize("name", [None, "fbsem16"])  # the default (fbsem32) and the previous default
def test_shipped_network_std_falls_with_the_counts_like_the_error(layout_2d, image_2d, name):
    """A shipped (dose-aware) FBSEM network on a held-out brain phantom (a family it never saw) at 5 % and
    100 % of the standard dose: its relative std and its actual error both fall with the counts."""
    net, posterior, _ = recon_weights.load_network("unrolled", name)
    assert net.config.dose_input, "the shipped unrolled network is expected to be dose-aware"
    rel_std, rel_err = [], []
    for counts in (5e4, 1e6):
        ph, sim, model, x0 = _test_case(layout_2d, image_2d, "brain", 3, counts)
        body = ph.regions["object"]
        pred = predict_unrolled(net, model, sim.prompts, x0, posterior, 4, seed=0)
        scale = float(sim.truth[body].mean())
        rel_std.append(float(pred.std[body].pow(2).mean().sqrt()) / scale)
        rel_err.append(float((pred.mean - sim.truth)[body].pow(2).mean().sqrt()) / scale)
    assert rel_err[1] < 0.8 * rel_err[0], rel_err
    assert rel_std[1] < 0.8 * rel_std[0], rel_std


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--counts-range", "1e5"], "--counts-range must be LOW,HIGH"),
        (["--counts-range", "1e5,1e4", "--families", "thorax"], "--counts-range must be LOW,HIGH with 0 < LOW"),
        (["--counts-range", "1e4,1e5"], "--counts-range needs --families"),
        (["--families", "liver"], "unknown phantom families"),
    ],
)
def test_train_unrolled_family_options_fail_in_one_line(tmp_path, capsys, args, message):
    from petuq_sirf.cli.main import main

    code = main(["train-unrolled", "--phantoms", "1", "--steps", "0", "--out", str(tmp_path / "w"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "w" / "model.safetensors").exists()


def _errors_against_input(net, posterior, layout, image) -> tuple[float, float]:
    """Relative object error of the network's posterior mean and of its MLEM-10 input on a thorax phantom."""
    ph, sim, model, x0 = _test_case(layout, image, "thorax", 4, 5e4)
    pred = predict_unrolled(net, model, sim.prompts, x0, posterior, 3, seed=0)
    body = ph.regions["object"]
    err = float((pred.mean - sim.truth)[body].norm() / sim.truth[body].norm())
    err0 = float((x0 - sim.truth)[body].norm() / sim.truth[body].norm())
    return err, err0


def test_default_unrolled_network_is_fbsem32w_and_the_previous_defaults_stay_selectable():
    """The default (no ``--weights``) is the 32-channel network learned from 512 phantoms per family, also named
    ``fbsem32w``; the previous defaults stay selectable: ``fbsem32`` (128 phantoms per family) and ``fbsem16``
    (16 channels, thorax + ellipses)."""
    assert recon_weights.weights_folder("unrolled") == recon_weights.weights_folder("unrolled", "fbsem32w")
    assert recon_weights.weights_folder("unrolled").name == "unrolled_fbsem32w_test2d"
    assert recon_weights.weights_folder("unrolled", "fbsem32").name == "unrolled_fbsem32_test2d"
    assert recon_weights.weights_folder("unrolled", "fbsem16").name == "unrolled_test2d"
    net, posterior, info = recon_weights.load_network("unrolled")
    assert net.config.channels == 32 and info["families"] == ["thorax", "ellipses", "texture"]
    assert info["phantoms"] == 512 and posterior is not None
    old, old_posterior, old_info = recon_weights.load_network("unrolled", "fbsem16")
    assert old.config.channels == 16 and old.config.dose_input and old_posterior is not None
    assert old_info["families"] == ["thorax", "ellipses"] and old.config.regulariser == "cnn"


def test_shipped_dbfb_network_loads_by_name_and_reconstructs(layout_2d, image_2d):
    net, posterior, info = recon_weights.load_network("unrolled", "dbfb")
    assert net.config.regulariser == "dbfb" and net.config.dose_input and posterior is not None
    assert info["families"] == ["thorax", "ellipses"]
    err, err0 = _errors_against_input(net, posterior, layout_2d, image_2d)
    assert err < 0.97 * err0, (err, err0)  # better than its MLEM-10 input (0.229 vs 0.243 measured)


def test_shipped_fbsem32_network_is_the_texture_trained_one_with_its_trained_mean(layout_2d, image_2d):
    """``--weights fbsem32``: 32 channels, learned on thorax + ellipses + texture (never brain), its posterior's
    locations are its point weights (fixed-location SVI), and it improves on its MLEM-10 input."""
    net, posterior, info = recon_weights.load_network("unrolled", "fbsem32")
    assert net.config.channels == 32 and net.config.dose_input and "brain" not in info["families"]
    assert info["families"] == ["thorax", "ellipses", "texture"] and info["training"]["svi_learn_loc"] is False
    point = net.state_dict()
    assert all(torch.equal(loc, point[k]) for k, loc in posterior.loc.items())
    err, err0 = _errors_against_input(net, posterior, layout_2d, image_2d)
    assert err < 0.9 * err0, (err, err0)


def test_shipped_fbsem32w_continues_fbsem32_on_more_phantoms(layout_2d, image_2d):
    """``--weights fbsem32w``: ``fbsem32``'s architecture continued on 512 training phantoms per family (never
    brain), fixed-location posterior, and it improves on its MLEM-10 input as ``fbsem32`` does."""
    net, posterior, info = recon_weights.load_network("unrolled", "fbsem32w")
    base, _, base_info = recon_weights.load_network("unrolled", "fbsem32")
    assert recon_weights.weights_folder("unrolled", "fbsem32w").name == "unrolled_fbsem32w_test2d"
    assert net.config == base.config and info["phantoms"] == 512 and base_info["phantoms"] == 128
    assert info["families"] == ["thorax", "ellipses", "texture"] and info["init_weights"].endswith(
        "unrolled_fbsem32_test2d"
    )
    assert info["training"]["num_steps"] > 0 and info["training"]["svi_learn_loc"] is False
    point = net.state_dict()
    assert all(torch.equal(loc, point[k]) for k, loc in posterior.loc.items())
    assert any(not torch.equal(point[k], v) for k, v in base.state_dict().items())  # new weights, not a copy
    err, err0 = _errors_against_input(net, posterior, layout_2d, image_2d)
    assert err < 0.9 * err0, (err, err0)


def test_shipped_fbsem32x_extends_the_dose_range_of_fbsem32w(layout_2d, image_2d):
    """``--weights fbsem32x``: ``fbsem32w`` continued with training counts up to 3e6 trues, so that the standard
    dose (1e6) lies inside the range; new weights, fixed-location posterior, better than its MLEM-10 input."""
    net, posterior, info = recon_weights.load_network("unrolled", "fbsem32x")
    base, _, base_info = recon_weights.load_network("unrolled", "fbsem32w")
    assert net.config == base.config and info["init_weights"].endswith("unrolled_fbsem32w_test2d")
    assert info["counts_range"] == [1e4, 3e6] and base_info["counts_range"] == [1e4, 1e6] and info["phantoms"] == 512
    assert "brain" not in info["families"] and info["training"]["svi_learn_loc"] is False
    point = net.state_dict()
    assert all(torch.equal(loc, point[k]) for k, loc in posterior.loc.items())
    assert any(not torch.equal(point[k], v) for k, v in base.state_dict().items())
    err, err0 = _errors_against_input(net, posterior, layout_2d, image_2d)
    assert err < 0.9 * err0, (err, err0)


def test_shipped_fbsem32y_unrolls_fbsem32x_to_ten_iterations(layout_2d, image_2d):
    """``--weights fbsem32y``: ``fbsem32x`` unrolled from 6 to 10 iterations and trained on; new weights, the
    same regulariser architecture, fixed-location posterior, better than its MLEM-10 input."""
    net, posterior, info = recon_weights.load_network("unrolled", "fbsem32y")
    base, _, _ = recon_weights.load_network("unrolled", "fbsem32x")
    assert base.config.num_iterations == 6 and net.config.num_iterations == 10
    assert replace(net.config, num_iterations=6) == base.config
    assert info["init_weights"].endswith("unrolled_fbsem32x_test2d") and info["counts_range"] == [1e4, 3e6]
    assert "brain" not in info["families"] and info["training"]["svi_learn_loc"] is False
    point = net.state_dict()
    assert all(torch.equal(loc, point[k]) for k, loc in posterior.loc.items())
    assert not torch.equal(point["log_beta"][:6], base.state_dict()["log_beta"])  # trained on, not a copy
    err, err0 = _errors_against_input(net, posterior, layout_2d, image_2d)
    assert err < 0.9 * err0, (err, err0)


def test_init_weights_continues_a_network_and_fixed_loc_keeps_its_mean(tmp_path, capsys):
    """``--init-weights A --steps 0``: the point network is A's (architecture and regulariser weights), the head
    is retrained; ``--svi-fixed-loc``: the posterior's locations are A's weights and only the scales moved."""
    from petuq_sirf.cli.main import main

    base = "train-unrolled --phantoms 2 --validation-phantoms 1 --unrolled-iterations 2 --steps 2 --batch-size 2"
    base += " --calibration-phantoms 0"
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*base.split(), "--channels", "4", "--head-steps", "0", "--svi-steps", "0", "--out", str(a)]) == 0
    args = [*base.split(), "--steps", "0", "--head-steps", "3", "--svi-steps", "3", "--svi-fixed-loc"]
    assert main([*args, "--init-weights", str(a), "--out", str(b)]) == 0
    net_a, _, _ = recon_weights.load_network("unrolled", a)
    net_b, post_b, info_b = recon_weights.load_network("unrolled", b)
    assert net_b.config.channels == 4 and info_b["init_weights"] == str(a)  # A's architecture, not the default 16
    sa, sb = net_a.state_dict(), net_b.state_dict()
    for name in sa:
        same = torch.equal(sa[name], sb[name])
        assert same != name.startswith("head."), name  # only the head changed
    for name, loc in post_b.loc.items():
        assert torch.equal(loc, sa[name]), name
    assert any(not torch.allclose(s, torch.full_like(s, 1e-3)) for s in post_b.scale.values())
    capsys.readouterr()
    assert main([*args, "--init-weights", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err, err
    assert main([*args, "--init-weights", str(a), "--channels", "8", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--channels 8 disagrees with --init-weights" in err, err
    assert not (tmp_path / "d" / "model.safetensors").exists()


def test_init_weights_unrolls_a_network_further_and_refuses_fewer_iterations(tmp_path, capsys):
    """``--init-weights A --unrolled-iterations K`` (K above A's): the shared regulariser is A's, A's strengths
    are kept and the added iterations start with A's last one; fewer iterations than A's are refused."""
    from petuq_sirf.cli.main import main

    base = "train-unrolled --phantoms 2 --validation-phantoms 1 --steps 2 --batch-size 2 --calibration-phantoms 0"
    base += " --head-steps 0 --svi-steps 0 --channels 4"
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*base.split(), "--unrolled-iterations", "2", "--out", str(a)]) == 0
    args = [*base.split(), "--steps", "0", "--init-weights", str(a)]
    assert main([*args, "--unrolled-iterations", "4", "--out", str(b)]) == 0
    net_a, _, _ = recon_weights.load_network("unrolled", a)
    net_b, _, _ = recon_weights.load_network("unrolled", b)
    assert net_a.config.num_iterations == 2 and net_b.config.num_iterations == 4
    la, lb = net_a.log_beta.detach(), net_b.log_beta.detach()
    assert not torch.equal(la[0], la[1])  # trained: the two strengths differ, so the copy below is checkable
    assert torch.equal(lb[:2], la) and torch.equal(lb[2:], la[-1].expand(2))
    sa, sb = net_a.state_dict(), net_b.state_dict()
    for name in sa:
        if name != "log_beta":
            assert torch.equal(sa[name], sb[name]), name
    capsys.readouterr()
    assert main([*args, "--unrolled-iterations", "1", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--unrolled-iterations 1 is fewer than" in err, err
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_unrolling_further_runs_the_added_iterations():
    """The unrolled-further copy is the same network for the same count, and each added iteration changes
    the output (it is run, not dropped)."""
    net = UnrolledFBSEM(UnrolledConfig(num_iterations=2, channels=4, depth=2))
    same, more = net.with_iterations(2), net.with_iterations(3)
    with pytest.raises(ValueError, match="fewer iterations"):
        net.with_iterations(1)
    model, y, truth = _tiny_problem()
    x0 = torch.full_like(truth, float(truth.mean()))
    with torch.no_grad():
        m, _ = net(model, y, x0)
        m_same, _ = same(model, y, x0)
        m_more, _ = more(model, y, x0)
    assert torch.equal(m, m_same)
    assert not torch.allclose(m, m_more)
