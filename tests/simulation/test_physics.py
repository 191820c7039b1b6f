import numpy as np
import pytest
import torch

from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.simulation.normalisation import crystal_efficiencies
from petuq_sirf.simulation.randoms import estimate_randoms, randoms_from_singles
from petuq_sirf.simulation.scatter import scatter_sinogram


def test_randoms_estimated_from_delayeds_match_truth(layout_3d):
    scanner = layout_3d.scanner
    singles = crystal_efficiencies(scanner, spread=0.2, seed=3) * 2.0
    true_randoms = randoms_from_singles(layout_3d, singles)
    true_randoms *= 2e5 / true_randoms.sum()  # high counts
    delayeds = torch.poisson(true_randoms, generator=torch.Generator().manual_seed(0))
    estimate = estimate_randoms(layout_3d, delayeds, num_iterations=30)
    assert abs(float(estimate.sum() / true_randoms.sum()) - 1) < 0.05
    # the estimate is much smoother than the delayeds and follows the crystal pattern
    err_est = float(((estimate - true_randoms) ** 2).mean())
    err_raw = float(((delayeds - true_randoms) ** 2).mean())
    assert err_est < 0.2 * err_raw


def test_scatter_has_requested_fraction_and_tails(layout_2d):
    emission = torch.zeros(layout_2d.shape)
    emission[..., 24:40] = 10.0
    eff = torch.ones(layout_2d.shape)
    scatter = scatter_sinogram(layout_2d, emission, 0.35, eff)
    frac = float(scatter.sum() / (scatter.sum() + emission.sum()))
    assert abs(frac - 0.35) < 1e-4
    assert (scatter >= 0).all() and scatter[..., :10].sum() > 0  # tails outside the object
    with pytest.raises(ValueError, match="scatter fraction"):
        scatter_sinogram(layout_2d, emission, 1.2)


def test_simulation_hits_requested_counts_and_is_reproducible(layout_2d, image_2d):
    phantom = nema_iec_phantom(image_2d)
    cfg = SimulationConfig(true_counts=2e5, randoms_fraction=0.25, scatter_fraction=0.3, seed=7, listmode=True)
    a = simulate(phantom, layout_2d, cfg)
    b = simulate(phantom, layout_2d, cfg)
    assert torch.equal(a.prompts, b.prompts)
    summary = a.summary()
    assert summary["expected_trues"] == pytest.approx(2e5, rel=1e-4)
    randoms_frac = summary["expected_randoms"] / float(a.expected_prompts.sum())
    assert randoms_frac == pytest.approx(0.25, rel=1e-3)
    # the prompts are Poisson around the expectation
    total = float(a.expected_prompts.sum())
    assert abs(float(a.prompts.sum()) - total) < 5 * np.sqrt(total)
    # the list mode histograms back to exactly the sinograms
    assert torch.equal(a.listmode.histogram(prompts=True), a.prompts.cpu())
    assert torch.equal(a.listmode.histogram(prompts=False), a.delayeds.cpu())
    assert np.all(np.diff(a.listmode.times_ms) >= 0)


def test_simulation_rejects_bad_config():
    with pytest.raises(ValueError, match="true_counts"):
        SimulationConfig(true_counts=-1)
    with pytest.raises(ValueError, match="randoms_fraction"):
        SimulationConfig(randoms_fraction=1.5)
