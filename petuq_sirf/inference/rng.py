"""Seeding without side effects: library code never seeds (or advances) the caller's global torch RNG.

Random numbers the package draws itself come from a ``torch.Generator``. Where a library call must use
torch's global RNG (``nn.Module`` weight initialisation, dropout, Pyro's samplers), it runs inside
:func:`seeded`, which forks the global RNG state (CPU and every CUDA device), seeds the fork and restores
the caller's state on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block on a fork of torch's global RNG, seeded with ``seed`` (None: continue the current state).

    The caller's RNG state (``torch.get_rng_state()`` and the CUDA states) is the same after the block as
    before it, whatever the block drew.
    """
    with torch.random.fork_rng(devices=_cuda_devices()):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def _cuda_devices() -> list[int]:
    """Every CUDA device (named explicitly: ``fork_rng`` warns when it has to guess among several)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
