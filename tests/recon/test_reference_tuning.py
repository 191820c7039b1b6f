"""Tuned classical references (issue 10, item 1): search on calibration cases, JSON round trip."""

import math
import os
import stat

import pytest
import torch

from petuq_sirf.recon.reference_tuning import (
    TuningCase,
    fingerprint_matches,
    load_tuning,
    lookup,
    map_rdp_reference,
    osem_reference,
    save_tuning,
    tune_map_rdp,
    tune_osem_postfilter,
    tuning_fingerprint,
    tuning_key,
)
from petuq_sirf.simulation.phantoms import brain_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, simulate
from petuq_sirf.uq import nrmse


@pytest.fixture(scope="module")
def cases(layout_2d, image_2d):
    sim = simulate(brain_phantom(image_2d), layout_2d, SimulationConfig(true_counts=3e4, seed=1))
    g = torch.Generator().manual_seed(0)
    prompts = torch.poisson(sim.expected_prompts.expand(2, *sim.expected_prompts.shape).contiguous(), generator=g)
    return [TuningCase(sim.acquisition_model(), prompts, sim.truth, sim.truth > 0)]


def test_osem_postfilter_search_picks_the_grid_minimum_and_smooths_low_counts(cases):
    res = tune_osem_postfilter(cases, fwhm_grid_mm=(0.0, 6.0, 10.0), iteration_grid=(2, 4))
    grid = {(int(i), float(f)): v for i, row in res["grid"].items() for f, v in row.items()}
    assert math.isclose(res["nrmse"], min(grid.values()))
    assert res["fwhm_mm"] > 0  # at 3e4 counts some smoothing beats the raw OSEM image
    # the stored optimum reproduces its NRMSE through osem_reference
    c = cases[0]
    images = osem_reference(c.model, c.prompts, res)
    again = sum(nrmse(x, c.truth, c.mask) for x in images) / len(images)
    assert math.isclose(again, res["nrmse"], rel_tol=1e-4)


def test_map_rdp_search_and_json_round_trip(cases, tmp_path):
    res = tune_map_rdp(cases, strength_grid=(0.001, 0.05), num_iterations=5, max_realisations=1, max_extensions=0)
    assert res["strength"] in (0.001, 0.05) and res["extensions"] == 0
    assert math.isclose(res["nrmse"], min(res["grid"].values()))
    path = save_tuning(tmp_path / "refs.json", {tuning_key("brain", 0.05): {"map_rdp": res}})
    save_tuning(path, {tuning_key("thorax", 1.0): {"map_rdp": res}})  # merges
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600
    loaded = load_tuning(path)
    assert lookup(loaded, "brain", 0.05)["map_rdp"]["strength"] == res["strength"]
    assert set(loaded) == {"brain@0.05", "thorax@1"}
    with pytest.raises(ValueError, match="no tuned references"):
        lookup(loaded, "brain", 0.1)


@pytest.fixture(scope="module")
def noiseless_case(layout_2d, image_2d):
    """Expected prompts as data: more OSEM passes, less smoothing and a weaker prior are always better."""
    sim = simulate(brain_phantom(image_2d), layout_2d, SimulationConfig(true_counts=3e4, seed=1))
    return TuningCase(sim.acquisition_model(), sim.expected_prompts, sim.truth, sim.truth > 0)


def test_osem_search_extends_the_iterations_while_the_optimum_is_the_last_one(noiseless_case):
    plain = tune_osem_postfilter([noiseless_case], fwhm_grid_mm=(0.0, 4.0), iteration_grid=(1, 2), max_extensions=0)
    assert plain["iterations"] == 2 and plain["at_grid_edge"] and plain["extensions"] == 0
    res = tune_osem_postfilter([noiseless_case], fwhm_grid_mm=(0.0, 4.0), iteration_grid=(1, 2), max_extensions=2)
    assert res["extensions"] == 2 and set(res["grid"]) == {"1", "2", "3", "4"}  # 2 -> 3 -> 4 passes
    assert res["iterations"] == 4 and res["at_grid_edge"]  # still improving: the result says so
    assert res["nrmse"] < plain["nrmse"]
    again = nrmse(
        osem_reference(noiseless_case.model, noiseless_case.prompts, res), noiseless_case.truth, noiseless_case.mask
    )
    assert math.isclose(again, res["nrmse"], rel_tol=1e-4)


def test_osem_search_extends_the_filter_at_low_counts_and_stops_inside(cases):
    res = tune_osem_postfilter(cases, fwhm_grid_mm=(0.0, 2.0), iteration_grid=(2, 3, 4), max_extensions=3)
    assert res["fwhm_mm"] > 2.0 and res["extensions"] >= 1  # 3e4 counts want more than 2 mm
    fwhms = sorted(float(f) for f in res["grid"]["2"])
    assert fwhms[:3] == [0.0, 2.0, 3.0]  # extended by 1.5
    assert res["at_grid_edge"] == (res["fwhm_mm"] == fwhms[-1] or res["iterations"] == max(map(int, res["grid"])))


def test_map_rdp_search_extends_the_strength_below_and_above_the_grid(noiseless_case, cases):
    down = tune_map_rdp([noiseless_case], strength_grid=(0.05, 0.1), num_iterations=5, max_extensions=2)
    assert down["extensions"] == 2 and down["strength"] == pytest.approx(0.0125)  # 0.05 / 2 / 2
    assert set(down["grid"]) == {"0.0125", "0.025", "0.05", "0.1"} and down["at_grid_edge"]
    up = tune_map_rdp(cases, strength_grid=(1e-6, 2e-6), num_iterations=5, max_realisations=1, max_extensions=1)
    assert up["strength"] == pytest.approx(4e-6) and up["extensions"] == 1  # noisy data: stronger is better
    with pytest.raises(ValueError, match="max_extensions"):
        tune_map_rdp(cases, strength_grid=(0.01,), max_extensions=-1)
    with pytest.raises(ValueError, match="iteration counts"):
        tune_map_rdp(cases, strength_grid=(0.01,), num_iterations=(0, 5))


def test_map_rdp_search_tunes_the_iterations_and_extends_them_while_still_improving(noiseless_case):
    """Noise-free data: more iterations of a weak prior always help, so the best count is the last one and
    the counts are doubled; the image of the chosen count reproduces the stored NRMSE."""
    res = tune_map_rdp([noiseless_case], strength_grid=(0.001, 0.002, 0.004), num_iterations=(2, 4), max_extensions=1)
    assert set(res["grid_iterations"]["0.001"]) == {"2", "4", "8"}  # 4 -> 8
    assert res["iterations"] == 8 and res["strength"] == pytest.approx(0.0005)  # both axes extended once
    per_count = res["grid_iterations"][f"{res['strength']:g}"]
    assert per_count["8"] < per_count["4"] < per_count["2"]
    assert res["grid"]["0.001"] == min(res["grid_iterations"]["0.001"].values())
    again = nrmse(
        map_rdp_reference(noiseless_case.model, noiseless_case.prompts, res), noiseless_case.truth, noiseless_case.mask
    )
    assert math.isclose(again, res["nrmse"], rel_tol=1e-4)


def test_tuning_fingerprint_changes_with_the_data_and_the_system_model(cases, layout_2d, image_2d):
    """A cached tuning is reused only for the same calibration data and projector: the fingerprint is
    reproducible, survives the JSON round trip, and changes with other prompts or another system model."""
    fp = tuning_fingerprint(cases)
    assert fingerprint_matches(fp, tuning_fingerprint(cases))
    c = cases[0]
    other_prompts = [TuningCase(c.model, c.prompts + 1, c.truth, c.mask)]
    assert not fingerprint_matches(fp, tuning_fingerprint(other_prompts))
    sim = simulate(brain_phantom(image_2d), layout_2d, SimulationConfig(true_counts=3e4, seed=1, psf_fwhm_mm=8.0))
    other_model = [TuningCase(sim.acquisition_model(), c.prompts, c.truth, c.mask)]  # same data, wider PSF
    assert not fingerprint_matches(fp, tuning_fingerprint(other_model))
    assert not fingerprint_matches(None, fp) and not fingerprint_matches(fp[:0], fp)


def test_in_plane_tuning_filters_each_plane_and_the_reference_follows_it(layout_3d, image_3d):
    """On a 3D image the in-plane search blurs no plane into its neighbours, and osem_reference applies the
    stored choice, so the stored NRMSE is reproduced (an isotropic filter would give another one)."""
    from petuq_sirf.recon import gaussian_postfilter
    from petuq_sirf.recon.reference_tuning import osem_realisations

    sim = simulate(brain_phantom(image_3d), layout_3d, SimulationConfig(true_counts=2e5, seed=2))
    case = TuningCase(sim.acquisition_model(), sim.prompts, sim.truth, sim.truth > 0)
    res = tune_osem_postfilter([case], fwhm_grid_mm=(0.0, 6.0), iteration_grid=(2,), max_extensions=0, in_plane=True)
    assert res["in_plane"] is True
    raw = osem_realisations(case.model, case.prompts[None], 2, 8)[0]
    in_plane = gaussian_postfilter(raw, (0.0, 6.0, 6.0), case.model.voxel_size_mm)
    assert math.isclose(res["grid"]["2"]["6"], nrmse(in_plane, case.truth, case.mask), rel_tol=1e-5)
    iso = tune_osem_postfilter([case], fwhm_grid_mm=(0.0, 6.0), iteration_grid=(2,), max_extensions=0)
    assert not math.isclose(iso["grid"]["2"]["6"], res["grid"]["2"]["6"], rel_tol=1e-4)
    ref = osem_reference(case.model, case.prompts, {**res, "fwhm_mm": 6.0, "iterations": 2})
    assert torch.allclose(ref, in_plane, rtol=1e-5, atol=1e-6)
