"""Figures of a posterior-bootstrap run: image summaries and ROI posteriors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petuq_sirf.viz.common import central_slice, save_figure, subplots


def bootstrap_figure(
    images: Mapping[str, np.ndarray],
    roi: Mapping[str, Mapping] | None,
    path: str | os.PathLike,
    level: float = 0.9,
    title: str | None = None,
) -> Path:
    """Central slices of ``images`` (name -> ``(z, y, x)``; names with "std" or "width" get their own
    scale, the others share one) and, when ``roi`` is given, each ROI's posterior mean uptake with its
    central ``level`` interval (and the truth when known)."""
    names = list(images)
    ncols = len(names) + (1 if roi else 0)
    fig, axes = subplots(1, ncols, figsize=(3.3 * ncols, 3.4), squeeze=False)
    shared = [n for n in names if "std" not in n and "width" not in n]
    vmax = max((float(central_slice(images[n]).max()) for n in shared), default=None)
    for ax, name in zip(axes[0], names, strict=False):
        sl = central_slice(images[name])
        own = name not in shared
        im = ax.imshow(sl, cmap="magma" if own else "gray_r", vmin=0, vmax=None if own else vmax)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if roi:
        ax = axes[0][-1]
        key = f"interval_{level:.2f}"
        labels = list(roi)
        y = np.arange(len(labels))
        means = np.array([roi[k]["mean"] for k in labels])
        lo = np.array([roi[k][key][0] for k in labels])
        hi = np.array([roi[k][key][1] for k in labels])
        ax.errorbar(means, y, xerr=[means - lo, hi - means], fmt="o", capsize=3, label=f"bootstrap {level:.0%}")
        truths = [roi[k].get("truth") for k in labels]
        if all(t is not None for t in truths):
            ax.plot(truths, y, "kx", label="truth")
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel("ROI mean uptake")
        ax.legend(fontsize=7)
        ax.set_title("ROI posteriors", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
