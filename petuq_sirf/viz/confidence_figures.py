"""Figure of anytime-valid ROI bounds against scan time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import rcParams

from petuq_sirf.viz.common import save_figure, subplots


def confidence_figure(
    frame_end_s: list[float],
    intervals: Mapping[str, Mapping[str, Mapping[str, list]]],
    path: str | os.PathLike,
    truth: Mapping[str, float] | None = None,
    title: str = "",
    units: str = "activity (image units)",
) -> Path:
    """One panel per ROI: the running (never widening) interval of every estimator against scan time,
    the per-frame interval as thin lines and the truth (dashed) when known."""
    estimators = list(intervals)
    rois = list(intervals[estimators[0]])
    fig, axes = subplots(1, len(rois), figsize=(4.6 * len(rois), 3.8), squeeze=False)
    t = np.asarray(frame_end_s, dtype=float)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, roi in zip(axes[0], rois, strict=True):
        for k, est in enumerate(estimators):
            iv = intervals[est][roi]
            col = colours[k % len(colours)]
            ax.fill_between(t, iv["running_lower"], iv["running_upper"], color=col, alpha=0.25, step="post")
            ax.plot(t, iv["running_lower"], color=col, lw=1.6, drawstyle="steps-post", label=f"{est} (running)")
            ax.plot(t, iv["running_upper"], color=col, lw=1.6, drawstyle="steps-post")
            ax.plot(t, iv["lower"], color=col, lw=0.7, ls=":", marker=".")
            ax.plot(t, iv["upper"], color=col, lw=0.7, ls=":", marker=".")
        if truth and roi in truth:
            ax.axhline(truth[roi], color="k", ls="--", lw=1.2, label="truth")
        ax.set_xlabel("scan time (s)")
        ax.set_ylabel(f"ROI mean, {units}")
        ax.set_title(roi, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
