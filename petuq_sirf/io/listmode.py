"""List-mode events: prompts and delayeds with bin index, time and a per-event weight.

Events index bins of a ``(sinograms, views, tangential)`` sinogram by flat (C-order) index.
Weights default to 1 and are what the posterior bootstrap re-draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass
class ListModeEvents:
    """A list-mode acquisition. Arrays are 1D of length ``N`` (events, sorted by time).

    Attributes:
        bins: flat bin index into ``data_shape`` (int64).
        times_ms: detection time in ms from the start (float64).
        prompt: True for prompt coincidences, False for delayed ones.
        data_shape: the sinogram shape ``(sinograms, views, tangential)`` the bins refer to.
        weights: per-event weight (float64), ones unless re-weighted.
    """

    bins: np.ndarray
    times_ms: np.ndarray
    prompt: np.ndarray
    data_shape: tuple[int, int, int]
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.bins)
        if self.weights is None:
            self.weights = np.ones(n)
        for name in ("times_ms", "prompt", "weights"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"list-mode {name} has {len(getattr(self, name))} entries for {n} events")
        size = int(np.prod(self.data_shape))
        if n and (self.bins.min() < 0 or self.bins.max() >= size):
            raise ValueError(
                f"list-mode bin indices outside 0..{size - 1}: the events do not match the sinogram {self.data_shape}"
            )
        if not np.isfinite(self.weights).all() or (self.weights < 0).any():
            raise ValueError("list-mode event weights must be finite and >= 0")

    def __len__(self) -> int:
        return len(self.bins)

    @property
    def num_prompts(self) -> int:
        return int(self.prompt.sum())

    @property
    def num_delayeds(self) -> int:
        return len(self) - self.num_prompts

    def histogram(self, prompts: bool = True, weights: np.ndarray | None = None) -> torch.Tensor:
        """Weighted sinogram of prompts (or delayeds), shape ``data_shape``.

        ``weights`` (length ``N``) replaces the stored weights for this call.
        """
        w = self.weights if weights is None else np.asarray(weights, dtype=np.float64)
        if len(w) != len(self):
            raise ValueError(f"{len(w)} weights given for {len(self)} events")
        if not np.isfinite(w).all():
            raise ValueError("event weights must be finite")
        sel = self.prompt if prompts else ~self.prompt
        counts = np.bincount(self.bins[sel], weights=w[sel], minlength=int(np.prod(self.data_shape)))
        return torch.as_tensor(counts.reshape(self.data_shape), dtype=torch.float32)

    def select_time(self, start_ms: float, stop_ms: float) -> ListModeEvents:
        """Events with ``start_ms <= time < stop_ms``."""
        if stop_ms <= start_ms:
            raise ValueError(f"time interval [{start_ms}, {stop_ms}) ms is empty")
        keep = (self.times_ms >= start_ms) & (self.times_ms < stop_ms)
        return self._subset(keep)

    def with_weights(self, weights: np.ndarray) -> ListModeEvents:
        """A copy carrying ``weights`` (finite, >= 0, one per event)."""
        return replace(self, weights=np.asarray(weights, dtype=np.float64))

    def _subset(self, keep: np.ndarray) -> ListModeEvents:
        return ListModeEvents(
            self.bins[keep], self.times_ms[keep], self.prompt[keep], self.data_shape, self.weights[keep]
        )
