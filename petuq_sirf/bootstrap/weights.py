"""Per-event bootstrap weights, drawn reproducibly from ``(base seed, replicate index)``.

Replicate ``b`` of a run with base seed ``s`` draws from ``numpy.random.SeedSequence(s, spawn_key=(b,))``,
the same stream ``SeedSequence(s).spawn(...)[b]`` gives, so a replicate's weights depend on nothing
but ``(s, b)``: not on the executor, the worker, or the order in which replicates run.
"""

from __future__ import annotations

import numpy as np

WEIGHT_KINDS = ("exp", "poisson")


def replicate_seed_sequence(base_seed: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of replicate ``index`` (``>= 0``) of a run with ``base_seed`` (``>= 0``)."""
    if base_seed < 0 or index < 0:
        raise ValueError(f"seeds and replicate indices must be >= 0, got seed {base_seed}, index {index}")
    return np.random.SeedSequence(int(base_seed), spawn_key=(int(index),))


def replicate_rng(base_seed: int, index: int) -> np.random.Generator:
    """A PCG64 generator for replicate ``index``."""
    return np.random.default_rng(replicate_seed_sequence(base_seed, index))


def replicate_int_seed(base_seed: int, index: int) -> int:
    """A seed in ``1 .. 2**31 - 1`` for replicate ``index`` (for external programs; STIR refuses 0)."""
    return 1 + int(replicate_seed_sequence(base_seed, index).generate_state(1, np.uint32)[0] % 0x7FFFFFFF)


def draw_weights(num_events: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``num_events`` i.i.d. weights with mean 1 and variance 1 (float64).

    ``exp``: Exp(1), the Bayesian (weighted-likelihood) bootstrap. ``poisson``: Poisson(1), the
    classical bootstrap (equivalent to resampling events with replacement, up to the total count).
    """
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weight kind {kind!r}: use one of {', '.join(WEIGHT_KINDS)}")
    if num_events <= 0:
        raise ValueError(f"cannot draw bootstrap weights for {num_events} events: the event set is empty")
    if kind == "exp":
        return rng.standard_exponential(num_events)
    return rng.poisson(1.0, num_events).astype(np.float64)


def check_weights(weights: np.ndarray, num_events: int) -> np.ndarray:
    """``weights`` as float64 after checking length, finiteness and sign (clear ValueErrors)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != num_events:
        raise ValueError(f"{w.size} bootstrap weights given for {num_events} events")
    if not np.isfinite(w).all():
        raise ValueError(f"bootstrap weights must be finite: {int((~np.isfinite(w)).sum())} are NaN or infinite")
    if (w < 0).any():
        raise ValueError("bootstrap weights must be >= 0")
    if w.sum() <= 0:
        raise ValueError("bootstrap weights are all zero: the replicate has no events")
    return w
