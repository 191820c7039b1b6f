"""Figures of a posterior-bootstrap run: image summaries and ROI posteriors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petuq_sirf.viz.common import central_slice, save_figure, subplots
from petuq_sirf.viz.labels import ACTIVITY_UNITS, add_colourbar, colourbar_label


def bootstrap_figure(
    images: Mapping[str, np.ndarray],
    roi: Mapping[str, Mapping] | None,
    path: str | os.PathLike,
    level: float = 0.9,
    title: str | None = None,
    units: str = ACTIVITY_UNITS,
    roi_calibrated: Mapping[str, Mapping] | None = None,
) -> Path:
    """Central slices of ``images`` (name -> ``(z, y, x)``; names with "std" or "width" get their own
    scale, up to the slice's 99.5th percentile so that a few outlying voxels do not hide the rest; the
    others share one) and, when ``roi`` is given, each ROI's posterior mean uptake with its
    central ``level`` interval (and the truth when known, marked inside the axes). Colour bars and the
    ROI axis are labelled in ``units``; put the run's settings (B, weights, iterations, beta) in ``title``.
    ``roi_calibrated`` (ROI name -> ``{"interval": [lo, hi]}``, from ``petuq bootstrap --roi-calibration``)
    adds the ROI-conformal interval below the bootstrap one for those ROIs."""
    names = list(images)
    ncols = len(names) + (1 if roi else 0)
    fig, axes = subplots(1, ncols, figsize=(3.3 * ncols, 3.4), squeeze=False)
    shared = [n for n in names if "std" not in n and "width" not in n]
    vmax = max((float(central_slice(images[n]).max()) for n in shared), default=None)
    for ax, name in zip(axes[0], names, strict=False):
        sl = central_slice(images[name])
        own = name not in shared
        top = float(np.percentile(sl, 99.5)) if own else vmax
        if own and not top > 0:
            top = None
        im = ax.imshow(sl, cmap="magma" if own else "gray_r", vmin=0, vmax=top)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        add_colourbar(fig, im, ax, colourbar_label(name, units))
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
        shown = [lo, hi, means]
        calibrated = [k for k in labels if roi_calibrated and k in roi_calibrated]
        if calibrated:
            yc = np.array([labels.index(k) for k in calibrated]) - 0.25
            mc = np.array([roi[k]["mean"] for k in calibrated])
            lc = np.array([roi_calibrated[k]["interval"][0] for k in calibrated])
            hc = np.array([roi_calibrated[k]["interval"][1] for k in calibrated])
            ax.errorbar(
                mc, yc, xerr=[mc - lc, hc - mc], fmt="s", ms=3, capsize=3, color="tab:orange",
                label=f"ROI-conformal {level:.0%}",
            )  # fmt: skip
            shown += [lc, hc]
        if all(t is not None for t in truths):
            ax.plot(truths, y, "kx", ms=7, mew=1.5, label="truth", zorder=3)
            shown.append(np.asarray(truths, dtype=float))
        # every marker and interval inside the axes, with a margin (none sits on the frame)
        left, right = float(np.min(np.concatenate(shown))), float(np.max(np.concatenate(shown)))
        pad = 0.08 * (right - left) if right > left else 0.1 * max(abs(right), 1e-12)
        ax.set_xlim(left - pad, right + pad)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel(f"ROI mean ({units})", fontsize=8)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
        ax.set_title("ROI posteriors", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
