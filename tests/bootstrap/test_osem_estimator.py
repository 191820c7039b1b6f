"""The list-mode bootstrap of unfiltered OSEM (``BootstrapConfig(estimator="osem")``, ``petuq bootstrap
--estimator osem``): replicates repeat the estimator, so their spread is its sampling spread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, run_replicate
from petuq_sirf.bootstrap.bias import estimate_bias
from petuq_sirf.recon import osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, simulate
from petuq_sirf.simulation.phantom_families import LesionSpec, family_phantoms
from petuq_sirf.uq.roi import roi_mean, roi_mean_samples


def _case(seed: int):
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    spec = LesionSpec(count=(3, 3), diameter_mm=(8.0, 30.0), hot_fraction=0.5)
    (ph,) = family_phantoms("thorax", image, "test", 1, lesions=spec)
    sim = simulate(ph, layout, SimulationConfig(seed=seed, listmode=True, true_counts=5e4))
    return ph, sim, BootstrapProblem.from_acquisition(sim)


def test_osem_bootstrap_spread_matches_the_sampling_spread_of_a_lesion_mean() -> None:
    """Spread of a lesion's ROI mean over the replicates of one data set ~ its spread over independent
    Poisson realisations (the MAP bootstrap, warm-started, is not held to this; ignoring the weights gives 0)."""
    ph, sim, _ = _case(500)
    big = max(range(len(ph.lesions)), key=lambda i: ph.lesions[i].diameter_mm)
    mask = ph.regions[f"lesion_{big}"]
    model = sim.acquisition_model()
    gen = torch.Generator().manual_seed(4)
    lam = sim.expected_prompts.double()
    est = [float(roi_mean(osem(model, torch.poisson(lam, generator=gen).float(), 3, 8).image, mask)) for _ in range(16)]
    config = BootstrapConfig(num_replicates=16, estimator="osem", num_iterations=3, seed=1)
    boot_std = []
    for seed in (500, 501):
        _, _, problem = _case(seed)
        problem.prepare(config)
        reps = torch.from_numpy(np.stack([run_replicate(problem, config, b).image for b in range(16)]))
        boot_std.append(float(roi_mean_samples(reps, mask).std()))
    ratio = float(np.mean(boot_std)) / float(np.std(est, ddof=1))
    assert 0.6 <= ratio <= 1.6, ratio


def test_osem_estimator_full_data_image_replicates_settings_and_bias() -> None:
    _, sim, problem = _case(7)
    config = BootstrapConfig(num_replicates=2, estimator="osem", num_iterations=2, num_subsets=4, seed=3)
    problem.prepare(config)
    model = sim.acquisition_model()
    full = osem(model, sim.listmode.histogram(), 2, 4).image
    assert torch.allclose(problem.x0, full, rtol=1e-5, atol=1e-6 * float(full.max()))  # the estimator, no prior
    assert problem.prior.beta == 0.0
    a, b = run_replicate(problem, config, 0), run_replicate(problem, config, 0)
    assert np.array_equal(a.image, b.image) and a.info["prior_factor"] == 1.0  # reproducible, no penalty draw
    assert not np.array_equal(a.image, run_replicate(problem, config, 1).image)
    # OSEM settings name the store; prior settings do not (unused); MAP-RDP settings are unchanged
    settings = config.replicate_settings()
    assert settings["estimator"] == "osem" and settings["num_subsets"] == 4 and "prior_strength" not in settings
    assert "estimator" not in BootstrapConfig().replicate_settings()
    # the parametric bias of OSEM comes from OSEM reconstructions of Poisson(ybar(x0)) draws
    est = estimate_bias(problem, config, 2)
    assert est.bias.shape == tuple(full.shape) and np.isfinite(est.bias).all()
    with pytest.raises(ValueError, match="unknown bootstrap estimator"):
        BootstrapConfig(estimator="fbp")
    with pytest.raises(ValueError, match="subsets"):
        BootstrapConfig(estimator="osem", num_subsets=0)


def test_cli_bootstrap_with_the_osem_estimator(tmp_path) -> None:
    from petuq_sirf.cli.main import main

    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "1e5", "--listmode", "--out", str(acq)]) == 0
    out = tmp_path / "boot"
    argv = ["bootstrap", str(acq), "--estimator", "osem", "--replicates", "3", "--subsets", "4"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["estimator"] == "osem" and metrics["config"]["num_iterations"] == 5
    assert metrics["replicates"] == 3
    assert (out / "mean.nii.gz").is_file() and (out / "bootstrap.png").stat().st_size > 1000


def test_pipeline_names_the_osem_estimate_in_the_figure_and_title(tmp_path) -> None:
    from petuq_sirf.cli.main import main
    from petuq_sirf.io.acquisition_folder import load_acquisition
    from petuq_sirf.pipelines.bootstrap import bootstrap_acquisition

    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "3e4", "--listmode", "--out", str(acq)]) == 0
    config = BootstrapConfig(num_replicates=2, estimator="osem", num_iterations=2, num_subsets=4)
    run = bootstrap_acquisition(load_acquisition(acq), config, tmp_path / "boot")
    assert "full-data OSEM (2 it x 4)" in run.figure_images
    assert "OSEM 2 it x 4 subsets per replicate, no filter" in run.title and "MAP" not in run.title
