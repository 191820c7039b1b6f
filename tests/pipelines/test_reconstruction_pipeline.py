"""``pipelines.reconstruct``: the method dispatch ``petuq reconstruct`` calls, usable from scripts."""

from __future__ import annotations

import json

import pytest
import torch

from petuq_sirf.backends import acquisition_model_for
from petuq_sirf.io.acquisition_folder import load_acquisition, save_acquisition
from petuq_sirf.pipelines import ReconstructionSettings, reconstruct
from petuq_sirf.recon import osem
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate


@pytest.fixture(scope="module")
def acq(tmp_path_factory, layout_2d, image_2d):
    sim = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=1e5, seed=1))
    folder = tmp_path_factory.mktemp("pipe") / "acq"
    save_acquisition(sim, folder)
    return load_acquisition(folder)


def test_the_method_name_chooses_the_algorithm(acq):
    mlem = reconstruct(acq, ReconstructionSettings(method="mlem", iterations=4))
    direct = osem(acquisition_model_for(acq, "embedded"), acq.prompts, 4, 1).image
    assert torch.allclose(mlem.images["image"], direct.cpu(), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="not yet the MAP estimate"):  # 10 iterations: far from converged
        rdp = reconstruct(acq, ReconstructionSettings(method="map-rdp", iterations=10, beta_strength=0.05))
    osem8 = reconstruct(acq, ReconstructionSettings(method="osem", iterations=3))
    assert rdp.metrics["method"] == "map-rdp" and osem8.metrics["subsets"] == 8 and mlem.metrics["subsets"] == 1
    bv = {r.method: r.metrics["metrics"]["background_variability"] for r in (rdp, osem8)}
    assert bv["map-rdp"] < bv["osem"]  # the prior smooths the background


def test_map_rdp_reports_how_far_it_converged(acq):
    """metrics.json says how much the last iteration moved the image (recomputed here from two runs) and a
    run stopped while the image still moves warns that it is not yet the MAP estimate."""
    settings = ReconstructionSettings(method="map-rdp", iterations=4, beta_strength=0.05)
    with pytest.warns(UserWarning, match="not yet the MAP estimate"):
        res = reconstruct(acq, settings)
    with pytest.warns(UserWarning, match="not yet the MAP estimate"):
        three = reconstruct(acq, ReconstructionSettings(method="map-rdp", iterations=3, beta_strength=0.05))
    x4, x3 = res.images["image"], three.images["image"]
    expected = float((x4 - x3).norm() / x4.norm())
    assert res.metrics["relative_update_last_iteration"] == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-3 and res.metrics["converged"] is False and res.metrics["stopped_at_convergence"] is False
    osem_run = reconstruct(acq, ReconstructionSettings(method="osem", iterations=2))
    assert "converged" not in osem_run.metrics  # only MAP-RDP has an objective to converge


def test_map_rdp_stops_at_the_tolerance_with_the_image_of_that_many_iterations(acq):
    """--tolerance ends MAP-RDP once an iteration moves the image by less than it: fewer iterations run,
    the last change is below it, no warning, and the image is that of a fixed run of as many iterations."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged run must not warn
        res = reconstruct(
            acq, ReconstructionSettings(method="map-rdp", iterations=300, beta_strength=0.05, tolerance=1e-3)
        )
    n = res.metrics["iterations_run"]
    assert 2 <= n < 300 and res.metrics["converged"] and res.metrics["stopped_at_convergence"]
    assert res.metrics["relative_update_last_iteration"] < 1e-3
    with pytest.warns(UserWarning, match="not yet the MAP estimate"):
        fixed = reconstruct(
            acq, ReconstructionSettings(method="map-rdp", iterations=n, beta_strength=0.05, tolerance=0)
        )
    assert torch.equal(fixed.images["image"], res.images["image"]) and fixed.metrics["iterations_run"] == n
    with pytest.raises(ValueError, match="--tolerance must be >= 0"):
        ReconstructionSettings(method="map-rdp", tolerance=-1.0)


def test_defaults_and_bad_settings(acq):
    assert ReconstructionSettings(method="map-rdp").iterations == 100
    assert ReconstructionSettings(method="pnp-ula").iterations == 1000
    with pytest.raises(ValueError, match="unknown reconstruction method 'fbp'"):
        ReconstructionSettings(method="fbp")
    with pytest.raises(ValueError, match="--samples must be >= 2"):
        ReconstructionSettings(method="unrolled", samples=1)


def test_result_writes_images_figure_and_metrics(acq, tmp_path):
    result = reconstruct(acq, ReconstructionSettings(method="osem", iterations=2, postfilter_fwhm_mm=5.0))
    paths = result.write(tmp_path)
    assert {"image", "figure", "metrics"} <= set(paths)
    assert (tmp_path / "image.nii.gz").is_file() and (tmp_path / "image.hv").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "osem" and metrics["iterations"] == 2 and 0 < metrics["metrics"]["nrmse"] < 1


def test_discrepancy_refinement_of_the_unrolled_mean(layout_2d, image_2d, tmp_path):
    """At high counts the shipped network's mean under-fits the data; the refinement (on by default) moves it (and
    the samples with it) by MLEM until z <= the guard's stop threshold, exactly as refine_to_discrepancy does, and
    the image gets closer to the truth. At low counts the data cannot tell: nothing changes. The shipped
    calibration was fitted on the refined mean, so turning the refinement off warns that the calibrated intervals
    describe another estimator."""
    from petuq_sirf.cli.main import main
    from petuq_sirf.recon.discrepancy import refine_to_discrepancy

    sim = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=2e6, seed=1))
    save_acquisition(sim, tmp_path / "high")
    high = load_acquisition(tmp_path / "high")
    with pytest.warns(UserWarning, match="calibration was fitted on the mean refined"):
        plain = reconstruct(high, ReconstructionSettings(method="unrolled", samples=2, refine_discrepancy=False))
    refined = reconstruct(high, ReconstructionSettings(method="unrolled", samples=2))
    assert refined.metrics["calibration_discrepancy_threshold"] == 0.0
    info = refined.metrics["discrepancy_refinement"]
    assert info["z_after"] <= info["stop_threshold"] < info["z_before"] and info["mlem_iterations"] > 0
    assert info["reached"]
    model = acquisition_model_for(high, "embedded")
    assert info["stop_threshold"] == pytest.approx(max(info["model_error_z"], 0.0))  # model error taken out
    expected = refine_to_discrepancy(model, high.prompts, plain.images["mean"], info["stop_threshold"]).image
    assert torch.allclose(refined.images["mean"], expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    shift = refined.summary.samples - plain.summary.samples
    both = (refined.summary.samples > 0) & (plain.summary.samples > 0)
    assert torch.allclose(shift[both], (expected - plain.images["mean"]).expand_as(shift)[both], atol=1e-4)
    assert torch.equal(refined.images["std"], plain.images["std"])
    assert refined.metrics["metrics"]["nrmse"] < plain.metrics["metrics"]["nrmse"]

    low = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=5e4, seed=1))
    save_acquisition(low, tmp_path / "low")
    out = tmp_path / "rec"
    args = ["reconstruct", str(tmp_path / "low"), "--method", "unrolled", "--samples", "2"]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["discrepancy_refinement"]["mlem_iterations"] == 0
    with pytest.warns(UserWarning, match="calibration was fitted"):
        plain_low = reconstruct(
            load_acquisition(tmp_path / "low"),
            ReconstructionSettings(method="unrolled", samples=2, refine_discrepancy=False),
        )
    assert "discrepancy_refinement" not in plain_low.metrics
    assert metrics["metrics"]["nrmse"] == pytest.approx(plain_low.metrics["metrics"]["nrmse"], rel=1e-6)
    with pytest.raises(ValueError, match="--method unrolled only"):
        ReconstructionSettings(method="osem", refine_discrepancy=True)
    assert ReconstructionSettings(method="osem").refine_discrepancy is False
    assert info["model_fit_z"] < 0 and not info["skipped_model_misfit"]

    # a model that cannot explain the data (scatter + randoms 1.5x too high): not refined, with a warning
    from dataclasses import replace

    wrong = replace(high, additive=high.additive * 1.5)
    with pytest.warns(UserWarning, match="not refined: even an unregularised OSEM fit"):
        guarded = reconstruct(wrong, ReconstructionSettings(method="unrolled", samples=2))
    g = guarded.metrics["discrepancy_refinement"]
    assert g["skipped_model_misfit"] and g["model_fit_z"] > 0 and g["mlem_iterations"] == 0
