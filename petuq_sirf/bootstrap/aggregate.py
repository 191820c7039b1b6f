"""Streaming aggregation of replicates: running mean / variance, quantiles, ROI posterior summaries.

:class:`RunningMoments` is Welford's update in float64, so memory is two images whatever ``B``.
Quantiles need the replicates themselves; :func:`store_quantiles` reads them from the store in
voxel chunks through memory maps, so memory is ``B x chunk`` and not ``B x image``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from petuq_sirf.bootstrap.store import ReplicateStore
from petuq_sirf.uq.calibration import check_levels


class RunningMoments:
    """Welford's running mean and variance of arrays of one shape (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot aggregate a replicate with non-finite values")
        if self._mean is None:
            self._mean = np.zeros_like(x)
            self._m2 = np.zeros_like(x)
        elif x.shape != self._mean.shape:
            raise ValueError(f"replicate shape {x.shape} differs from the first one {self._mean.shape}")
        self.count += 1
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("no replicates aggregated yet")
        return self._mean

    def variance(self, ddof: int = 1) -> np.ndarray:
        if self.count <= ddof:
            raise ValueError(f"variance needs more than {ddof} replicates, have {self.count}")
        return self._m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> np.ndarray:
        return np.sqrt(self.variance(ddof))


def store_quantiles(
    store: ReplicateStore,
    probabilities: Iterable[float],
    indices: list[int] | None = None,
    chunk_voxels: int = 16384,
) -> np.ndarray:
    """Voxel-wise empirical quantiles ``(len(probabilities), z, y, x)`` of the stored replicates.

    Reads ``chunk_voxels`` voxels of every replicate at a time (memory-mapped), so peak memory is
    about ``B * chunk_voxels * 8`` bytes.
    """
    probs = np.asarray(list(probabilities), dtype=np.float64)
    if ((probs < 0) | (probs > 1)).any():
        raise ValueError("quantile probabilities must be in [0, 1]")
    indices = store.completed() if indices is None else list(indices)
    if not indices:
        raise ValueError(f"{store.folder} holds no replicates")
    maps = [store.load(b, mmap=True) for b in indices]
    shape = maps[0].shape
    flat = [m.reshape(-1) for m in maps]
    n = flat[0].size
    out = np.empty((len(probs), n), dtype=np.float64)
    for a in range(0, n, chunk_voxels):
        block = np.stack([f[a : a + chunk_voxels] for f in flat]).astype(np.float64)
        out[:, a : a + chunk_voxels] = np.quantile(block, probs, axis=0)
    del maps, flat
    return out.reshape((len(probs), *shape))


@dataclass
class BootstrapSummary:
    """Posterior summaries of ``count`` replicates. Images ``(z, y, x)``, float64.

    ``intervals[level] = (lower, upper)`` are central credible intervals from empirical quantiles;
    ``roi[name]`` holds the posterior of the mean uptake in that region (``mean``, ``std``,
    ``interval_<level>``, and ``truth``/``inside_<level>`` when the truth is known).
    """

    count: int
    mean: np.ndarray
    std: np.ndarray
    median: np.ndarray | None = None
    intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    roi: dict[str, dict] = field(default_factory=dict)


def roi_posterior(values: np.ndarray, levels: Iterable[float], truth: float | None = None) -> dict:
    """Summary of the replicates' mean uptake in one ROI (``values`` shape ``(B,)``)."""
    values = np.asarray(values, dtype=np.float64)
    out = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    for lv in check_levels(levels, "credible level", allow_empty=True):
        lo, hi = np.quantile(values, [0.5 - lv / 2, 0.5 + lv / 2])
        out[f"interval_{lv:.2f}"] = [float(lo), float(hi)]
        if truth is not None:
            out[f"inside_{lv:.2f}"] = bool(lo <= truth <= hi)
    if truth is not None:
        out["truth"] = float(truth)
    return out


def summarise_store(
    store: ReplicateStore,
    levels: Iterable[float] = (0.9,),
    regions: Mapping[str, np.ndarray] | None = None,
    truth: np.ndarray | None = None,
    indices: list[int] | None = None,
    quantiles: bool = True,
    chunk_voxels: int = 16384,
) -> BootstrapSummary:
    """Stream over the stored replicates: mean, std (ddof 1), ROI posteriors, and (``quantiles``)
    median and central intervals at ``levels``. Memory does not grow with ``B`` except the ROI
    scalars."""
    levels = check_levels(levels, "credible level", allow_empty=True)
    indices = store.completed() if indices is None else list(indices)
    if len(indices) < 2:
        raise ValueError(f"{store.folder} holds {len(indices)} replicate(s): at least 2 are needed for a posterior")
    moments = RunningMoments()
    masks = {k: np.asarray(v, dtype=bool) for k, v in (regions or {}).items() if np.asarray(v).any()}
    roi_values: dict[str, list[float]] = {k: [] for k in masks}
    for _, img in store.iter_images(indices):
        moments.update(img)
        for k, m in masks.items():
            roi_values[k].append(float(img[m].astype(np.float64).mean()))
    summary = BootstrapSummary(count=moments.count, mean=moments.mean.copy(), std=moments.std())
    for k, vals in roi_values.items():
        t = float(np.asarray(truth)[masks[k]].mean()) if truth is not None else None
        summary.roi[k] = roi_posterior(np.asarray(vals), levels, t)
    if quantiles:
        probs = [0.5] + [p for lv in levels for p in (0.5 - lv / 2, 0.5 + lv / 2)]
        q = store_quantiles(store, probs, indices, chunk_voxels)
        summary.median = q[0]
        for i, lv in enumerate(levels):
            summary.intervals[lv] = (q[1 + 2 * i], q[2 + 2 * i])
    return summary
