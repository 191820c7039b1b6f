import numpy as np
import pytest
import torch

from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.simulation.listmode_draws import events_from_counts


def _events(seed=0):
    rng = np.random.default_rng(seed)
    prompts = torch.as_tensor(rng.poisson(3.0, size=(2, 4, 5))).float()
    delayeds = torch.as_tensor(rng.poisson(0.5, size=(2, 4, 5))).float()
    return prompts, delayeds, events_from_counts(prompts, delayeds, 10.0, rng)


def test_weighted_histogram_and_time_selection():
    prompts, delayeds, ev = _events()
    assert ev.num_prompts == prompts.sum() and ev.num_delayeds == delayeds.sum()
    w = np.full(len(ev), 2.0)
    assert torch.allclose(ev.histogram(weights=w), 2 * prompts)
    first = ev.select_time(0, 5000)
    second = ev.select_time(5000, 10000)
    assert torch.equal(first.histogram() + second.histogram(), prompts)
    assert ev.with_weights(w).histogram().sum() == 2 * prompts.sum()


def test_listmode_validation():
    _, _, ev = _events()
    with pytest.raises(ValueError, match="finite"):
        ev.histogram(weights=np.full(len(ev), np.nan))
    with pytest.raises(ValueError, match="do not match the sinogram"):
        ListModeEvents(np.array([0, 100]), np.zeros(2), np.ones(2, bool), (2, 2, 2))
    with pytest.raises(ValueError, match="weights"):
        ev.with_weights(-np.ones(len(ev)))
    with pytest.raises(ValueError, match="empty"):
        ev.select_time(5, 5)
