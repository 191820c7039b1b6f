"""Simulated list-mode acquisitions: events drawn from count sinograms."""

from __future__ import annotations

import numpy as np
import torch

from petuq_sirf.io.listmode import ListModeEvents


def events_from_counts(
    prompts: torch.Tensor, delayeds: torch.Tensor | None, duration_s: float, rng: np.random.Generator
) -> ListModeEvents:
    """List-mode events realising exactly the given integer count sinograms, at uniform random times.

    Given Poisson counts per bin, the event times of a stationary Poisson process are
    independent and uniform over the acquisition, so this is an exact list-mode simulation.
    """
    if duration_s <= 0:
        raise ValueError(f"acquisition duration must be > 0 s, got {duration_s}")
    shape = tuple(prompts.shape)
    p = prompts.reshape(-1).cpu().numpy().astype(np.int64)
    d = np.zeros_like(p) if delayeds is None else delayeds.reshape(-1).cpu().numpy().astype(np.int64)
    if (p < 0).any() or (d < 0).any():
        raise ValueError("count sinograms must be non-negative integers")
    bins = np.concatenate([np.repeat(np.arange(p.size), p), np.repeat(np.arange(d.size), d)])
    is_prompt = np.concatenate([np.ones(p.sum(), bool), np.zeros(d.sum(), bool)])
    times = rng.uniform(0.0, duration_s * 1000.0, size=bins.size)
    order = np.argsort(times, kind="stable")
    return ListModeEvents(bins[order], times[order], is_prompt[order], shape)  # type: ignore[arg-type]
