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
    res = tune_map_rdp(cases, strength_grid=(0.001, 0.05), num_iterations=5, max_realisations=1)
    assert res["strength"] in (0.001, 0.05)
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
