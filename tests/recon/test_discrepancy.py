"""Discrepancy-stopped EM refinement: the deviance, its expectation, and where the refinement stops."""

import pytest
import torch

from petuq_sirf.recon import gaussian_postfilter
from petuq_sirf.recon.discrepancy import discrepancy_z, expected_poisson_deviance, refine_to_discrepancy
from petuq_sirf.recon.likelihood import poisson_deviance
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.uq import nrmse


@pytest.mark.parametrize("mean", [0.05, 0.7, 3.0, 12.0, 29.0, 31.0, 200.0])
def test_expected_deviance_matches_monte_carlo(mean):
    y = torch.poisson(torch.full((400_000,), mean, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    mc = poisson_deviance(y, torch.full_like(y, mean)).mean()
    se = poisson_deviance(y, torch.full_like(y, mean)).std() / 400_000**0.5
    exact = expected_poisson_deviance(torch.tensor([mean], dtype=torch.float64))
    assert abs(float(exact) - float(mc)) < 4 * float(se) + 1e-4


def test_deviance_is_zero_at_a_perfect_fit_and_twice_the_mean_for_empty_bins():
    y = torch.tensor([0.0, 3.0, 10.0])
    assert torch.allclose(poisson_deviance(y, torch.tensor([0.5, 3.0, 10.0])), torch.tensor([1.0, 0.0, 0.0]))
    assert (poisson_deviance(y, torch.tensor([0.5, 2.0, 12.0])) > 0).all()


@pytest.fixture(scope="module")
def high_counts(layout_2d, image_2d):
    phantom = nema_iec_phantom(image_2d)
    sim = simulate(phantom, layout_2d, SimulationConfig(true_counts=2e6, seed=4))
    return sim, sim.acquisition_model()


def test_z_is_near_zero_at_the_truth_and_large_for_an_over_smoothed_image(high_counts, image_2d):
    sim, model = high_counts
    ybar = model.forward(sim.truth)
    ys = torch.poisson(ybar.expand(20, *ybar.shape).contiguous(), generator=torch.Generator().manual_seed(0))
    z_true = discrepancy_z(ys, ybar)
    assert abs(float(z_true.mean())) < 0.6 and 0.4 < float(z_true.std()) < 1.8  # about standard normal
    smooth = gaussian_postfilter(sim.truth, 12.0, image_2d.voxel_size_mm)
    assert float(discrepancy_z(ys[0], model.forward(smooth))) > 10


def test_refinement_undoes_over_smoothing_until_the_data_are_fit(high_counts, image_2d):
    sim, model = high_counts
    smooth = gaussian_postfilter(sim.truth, 12.0, image_2d.voxel_size_mm)
    before = smooth.clone()
    ref = refine_to_discrepancy(model, sim.prompts, smooth, max_iterations=100)
    assert torch.equal(smooth, before)  # input untouched
    assert bool(ref.reached) and float(ref.z_end) <= 0 < float(ref.z_start)
    assert 0 < int(ref.iterations) < 100
    obj = sim.truth > 0
    assert nrmse(ref.image, sim.truth, obj) < 0.8 * nrmse(smooth, sim.truth, obj)
    # it stopped at the first iterate that fits: one iteration fewer still under-fits
    if int(ref.iterations) > 1:
        fewer = refine_to_discrepancy(model, sim.prompts, smooth, max_iterations=int(ref.iterations) - 1)
        assert not bool(fewer.reached)
        assert float(fewer.z_end) > 0


def test_refinement_leaves_an_image_that_already_fits_unchanged_and_batches_stop_on_their_own(high_counts, image_2d):
    sim, model = high_counts
    smooth = gaussian_postfilter(sim.truth, 12.0, image_2d.voxel_size_mm)
    y = torch.stack([sim.prompts, sim.prompts])
    x = torch.stack([sim.truth, smooth])
    ref = refine_to_discrepancy(model, y, x, threshold=3.0)  # the truth fits within 3 standard deviations
    assert int(ref.iterations[0]) == 0 and torch.equal(ref.image[0], sim.truth)
    assert int(ref.iterations[1]) > 0 and bool(ref.reached.all())
    alone = refine_to_discrepancy(model, sim.prompts, smooth, threshold=3.0)
    assert torch.allclose(alone.image, ref.image[1], rtol=1e-5, atol=1e-6 * float(smooth.max()))


def test_refinement_rejects_bad_input(high_counts):
    sim, model = high_counts
    with pytest.raises(ValueError, match="threshold"):
        refine_to_discrepancy(model, sim.prompts, sim.truth, threshold=float("nan"))
    with pytest.raises(ValueError, match="max_iterations"):
        refine_to_discrepancy(model, sim.prompts, sim.truth, max_iterations=-1)
    with pytest.raises(ValueError, match="image has shape"):
        refine_to_discrepancy(model, sim.prompts, sim.truth[..., :-1])
    with pytest.raises(ValueError, match="do not match"):
        refine_to_discrepancy(model, sim.prompts[None].expand(2, *sim.prompts.shape), sim.truth)
    with pytest.raises(ValueError, match=">= 0"):
        refine_to_discrepancy(model, sim.prompts, -sim.truth)


def test_calibration_describes_the_refined_mean_when_asked(layout_2d, image_2d):
    """At full dose the refinement moves the mean, so a calibration of the refined estimator is another one; the
    mean it calibrates is the plain prediction refined by refine_to_discrepancy with the model-error guard's
    per-phantom thresholds (as petuq reconstruct refines)."""
    from petuq_sirf.recon.family_data import family_low_dose_set
    from petuq_sirf.recon.lowdose import geometric_model
    from petuq_sirf.recon.unrolled import calibrate_unrolled, predict_for_calibration
    from petuq_sirf.recon.weights import load_network

    net, post, _ = load_network("unrolled", "fbsem32w")
    geometric = geometric_model(layout_2d, image_2d)
    data = family_low_dose_set(layout_2d, image_2d, ["texture"], "calibration", 2, 1e6, geometric, start=900)
    plain = predict_for_calibration(net, data, geometric, post, 2)
    refined = predict_for_calibration(net, data, geometric, post, 2, refine_threshold=0.0)
    from petuq_sirf.recon.discrepancy import model_error_z

    fit_z, excess = model_error_z(data.model(geometric), data.prompts)  # per phantom, each with its own terms
    assert excess.shape == (2,) and bool((fit_z < 0).all())
    batched = data.model(geometric)
    assert torch.allclose(batched.forward(data.truth)[1], batched.item(1).forward(data.truth[1]))
    expected = refine_to_discrepancy(data.model(geometric), data.prompts, plain.mean, excess.clamp_min(0)).image
    assert torch.allclose(refined.mean, expected) and not torch.allclose(refined.mean, plain.mean)
    assert torch.equal(refined.std, plain.std)
    scales_plain = calibrate_unrolled(net, data, geometric, post, 2, levels=(0.9,))
    scales_refined = calibrate_unrolled(net, data, geometric, post, 2, levels=(0.9,), refine_threshold=0.0)
    assert scales_plain[0.9] != scales_refined[0.9]


def test_model_fit_check_flags_a_wrong_model_and_the_refinement_then_leaves_the_image(high_counts, image_2d):
    """An unregularised OSEM fit over-fits data of a correct model (z < 0) but not data the model cannot explain
    (additive term 1.5x too high: z > 0). With the check, such data are not refined; correct-model data are refined
    to the threshold raised by the estimated model error (about 0 for a correct model)."""
    from petuq_sirf.inference.weight_posterior import PosteriorImage
    from petuq_sirf.recon.discrepancy import model_error_z, model_fit_z, refine_posterior_mean

    sim, model = high_counts
    fit_z, excess = model_error_z(model, sim.prompts)
    assert float(fit_z) < -3 and abs(float(excess)) < 3
    assert float(model_fit_z(model, sim.prompts)) == float(fit_z)
    wrong = model.with_terms(model.multiplicative, model.additive * 1.5)
    assert float(model_fit_z(wrong, sim.prompts)) > 3
    smooth = gaussian_postfilter(sim.truth, 12.0, image_2d.voxel_size_mm)
    summary = PosteriorImage(smooth, smooth * 0.1, smooth * 0.1, smooth * 0.0, smooth.expand(2, *smooth.shape).clone())
    out, ref = refine_posterior_mean(wrong, sim.prompts, summary, check_model_fit=True)
    assert bool(ref.skipped) and not bool(ref.reached) and int(ref.iterations) == 0 and torch.equal(out.mean, smooth)
    out, ref = refine_posterior_mean(model, sim.prompts, summary, check_model_fit=True)
    plain = refine_to_discrepancy(model, sim.prompts, smooth, max(float(excess), 0.0))
    assert not bool(ref.skipped) and float(ref.model_error_z) == float(excess)
    assert torch.equal(out.mean, plain.image) and int(ref.iterations) > 0
    again, _ = refine_posterior_mean(model, sim.prompts, summary, model_error=(fit_z, excess))  # precomputed guard
    assert torch.equal(again.mean, out.mean)
    with pytest.raises(ValueError, match="skip has shape"):
        refine_to_discrepancy(model, sim.prompts, smooth, skip=torch.tensor([True, False]))


def test_model_error_excess_grows_with_the_mismatch(layout_2d, image_2d):
    """The excess z (data fit against a fit to data simulated from it) grows as the additive term gets more wrong."""
    from petuq_sirf.recon.discrepancy import model_error_z

    sim = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=1e5, seed=4))
    model = sim.acquisition_model()
    excess = [
        float(model_error_z(model.with_terms(model.multiplicative, model.additive * a), sim.prompts)[1])
        for a in (1.0, 1.5)
    ]
    assert abs(excess[0]) < 3.5 and excess[1] > 8
