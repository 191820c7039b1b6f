import numpy as np
import pytest
import torch

from petuq_sirf.recon import RelativeDifferencePrior, map_rdp, mlem, osem
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.uq import background_variability, nrmse


@pytest.fixture(scope="module")
def noisy(layout_2d, image_2d):
    phantom = nema_iec_phantom(image_2d)
    return simulate(phantom, layout_2d, SimulationConfig(true_counts=3e5, seed=1))


def test_mlem_log_likelihood_increases_monotonically(noisy):
    rec = mlem(noisy.acquisition_model(), noisy.prompts, num_iterations=15, track_objective=True)
    diffs = np.diff(rec.objective)
    assert (diffs >= -1e-6 * abs(rec.objective[0])).all()
    assert rec.objective[-1] > rec.objective[0]


def test_osem_recovers_noiseless_phantom(layout_2d, image_2d):
    phantom = nema_iec_phantom(image_2d)
    sim = simulate(phantom, layout_2d, SimulationConfig(true_counts=1e6, psf_fwhm_mm=0.0, randoms_fraction=0.1))
    model = sim.acquisition_model().with_terms(additive=sim.additive_true)
    rec = osem(model, sim.expected_prompts, num_iterations=40, num_subsets=8)
    assert nrmse(rec.image, sim.truth, sim.truth > 0) < 0.05


def test_map_rdp_reduces_background_variability(noisy):
    model = noisy.acquisition_model()
    ref = osem(model, noisy.prompts, num_iterations=4, num_subsets=8).image
    prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), ref, strength=0.01)
    rec_map = map_rdp(model, noisy.prompts, prior, num_iterations=40)
    rec_ml = map_rdp(model, noisy.prompts, RelativeDifferencePrior(beta=0.0), num_iterations=40)
    bkg = noisy.regions["background"]
    assert background_variability(rec_map.image, bkg) < 0.7 * background_variability(rec_ml.image, bkg)
    assert (np.diff(rec_map.objective) >= 0).all()


def test_map_with_zero_beta_is_mlem(noisy):
    model = noisy.acquisition_model()
    a = map_rdp(model, noisy.prompts, RelativeDifferencePrior(beta=0.0), num_iterations=3).image
    b = mlem(model, noisy.prompts, num_iterations=3).image
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.max()))


def test_map_rdp_tolerance_stops_when_an_iteration_barely_moves_the_image(noisy):
    model = noisy.acquisition_model()
    prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), torch.ones(model.image_shape), strength=0.01)
    seen = []
    rec = map_rdp(model, noisy.prompts, prior, 500, tolerance=2e-3, callback=lambda it, x: seen.append(x.clone()))
    assert 2 <= len(seen) < 500 and len(rec.objective) == len(seen)
    last = float((seen[-1] - seen[-2]).norm() / seen[-1].norm())
    before = float((seen[-2] - seen[-3]).norm() / seen[-2].norm()) if len(seen) > 2 else 1.0
    assert last < 2e-3 <= before  # stopped at the first iteration below the tolerance
    assert rec.stop_reason == "tolerance" and rec.iterations_run == len(seen)
    assert rec.relative_update == pytest.approx(last, rel=1e-5)
    full = map_rdp(model, noisy.prompts, prior, 3)
    assert full.stop_reason is None and full.iterations_run == 3 and full.relative_update > 2e-3
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        map_rdp(model, noisy.prompts, prior, 5, tolerance=-1.0)


def test_bad_measured_data_is_rejected(noisy):
    model = noisy.acquisition_model()
    y = noisy.prompts.clone()
    y[0, 0, 0] = -1
    with pytest.raises(ValueError, match="negative counts"):
        osem(model, y, 1)
    y[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mlem(model, y, 1)
    with pytest.raises(ValueError, match="expects"):
        osem(model, torch.ones(2, 3, 4), 1)
    with pytest.raises(ValueError, match="subsets"):
        osem(model, noisy.prompts, 1, num_subsets=1000)


def test_3d_brain_simulation_and_osem(layout_3d, image_3d):
    from petuq_sirf.simulation import brain_phantom

    phantom = brain_phantom(image_3d)
    sim = simulate(phantom, layout_3d, SimulationConfig(true_counts=2e6, seed=3))
    model = sim.acquisition_model()
    mask = sim.truth > 0
    start = torch.ones(image_3d.shape) * float(sim.truth[mask].mean())
    rec = osem(model, sim.prompts, num_iterations=5, num_subsets=4).image
    assert nrmse(rec, sim.truth, mask) < 0.6 * nrmse(start, sim.truth, mask)
