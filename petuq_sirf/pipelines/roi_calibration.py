"""Lesion ROI-mean intervals of the posterior bootstrap, calibrated by split conformal on calibration runs.

A bootstrap run writes, per ROI, the posterior of the mean uptake (``metrics.json["roi"][name]``: replicate
mean, central sample intervals, the ROI's equivalent diameter and, when the truth is known, the true mean).
:func:`fit_roi_calibration` pools the lesion ROIs of bootstrap runs on *calibration* acquisitions (known
truth; e.g. ``petuq simulate --phantom family:thorax:calibration:K``) and fits, per lesion-size group, the
finite-sample conformal quantile ``q`` of ``|truth - centre| / half-width`` (``uq.roi.RoiConformal``):
``centre`` is the replicates' ROI mean, ``half-width`` half the central ``level`` sample interval.
:func:`apply_roi_calibration` gives a new run's ROIs the intervals ``centre -/+ q half-width``.

Guarantee: coverage >= ``level`` on average over ROIs exchangeable with the calibration ROIs (same
bootstrap settings, similar anatomy, counts and scanner). It is marginal, not per lesion, and it does not
hold under a shift the calibration set does not contain; `docs/posterior_bootstrap.md` measures how far it
carries from thorax to held-out brain lesions. A file is tied to the bootstrap settings it was fitted with:
applying it to a run with other settings is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from petuq_sirf.io.atomic import atomic_write_json
from petuq_sirf.pipelines.calibration_files import check_format, check_same_settings, common_settings, read_calibration
from petuq_sirf.uq.roi import RoiConformal, size_group

FORMAT = "petuq-roi-calibration"
CALIBRATION_FILE = "roi_calibration.json"
VERSION = 1
DEFAULT_SIZE_EDGES_MM: tuple[float, ...] = (15.0,)
DEFAULT_PREFIX = "lesion_"


def _interval_key(level: float) -> str:
    return f"interval_{level:.2f}"


def roi_rows(metrics: Mapping, level: float = 0.9, prefix: str = DEFAULT_PREFIX, need_truth: bool = True) -> list[dict]:
    """The ROIs named ``prefix*`` of one bootstrap run's metrics: ``name``, ``truth`` (or None), ``centre``,
    ``half_width`` (half the central ``level`` sample interval) and ``equivalent_diameter_mm``."""
    key = _interval_key(level)
    rows = []
    for name, post in (metrics.get("roi") or {}).items():
        if not name.startswith(prefix):
            continue
        missing = [k for k in (key, "mean", "equivalent_diameter_mm") if k not in post]
        if need_truth and "truth" not in post:
            missing.append("truth")
        if missing:
            raise ValueError(
                f"ROI {name!r} lacks {', '.join(missing)}: run 'petuq bootstrap' with --level {level:g} "
                "(and a known truth for calibration)"
            )
        lo, hi = post[key]
        rows.append(
            {
                "name": name,
                "truth": post.get("truth"),
                "centre": float(post["mean"]),
                "half_width": 0.5 * (float(hi) - float(lo)),
                "equivalent_diameter_mm": float(post["equivalent_diameter_mm"]),
            }
        )
    return rows


def fit_roi_calibration(
    runs: Sequence[Mapping],
    level: float = 0.9,
    prefix: str = DEFAULT_PREFIX,
    size_edges_mm: Sequence[float] = DEFAULT_SIZE_EDGES_MM,
    min_group_size: int = 10,
    names: Sequence[str] | None = None,
) -> dict:
    """Fit ROI-conformal factors on the ROIs ``prefix*`` of bootstrap runs (their ``metrics.json`` dicts).

    All runs must share their bootstrap settings (seed and number of replicates aside). Groups with fewer
    than ``min_group_size`` ROIs use the pooled factor. Returns the calibration as a JSON-ready dict.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not runs:
        raise ValueError("no calibration runs given")
    settings = common_settings([r.get("config") or {} for r in runs])
    rows = [row for r in runs for row in roi_rows(r, level, prefix)]
    if not rows:
        raise ValueError(f"the calibration runs have no ROIs named {prefix}* with a known truth")
    need = math.ceil(level / (1.0 - level) - 1e-9)
    if len(rows) < need:
        raise ValueError(
            f"{len(rows)} calibration ROIs are too few for level {level:g}: the conformal factor needs at least {need}"
        )
    edges = tuple(float(e) for e in size_edges_mm)
    groups = [size_group(x["equivalent_diameter_mm"], edges) for x in rows]
    rc = RoiConformal(levels=(level,), min_group_size=min_group_size).fit(
        torch.tensor([x["truth"] for x in rows], dtype=torch.float64),
        torch.tensor([x["centre"] for x in rows], dtype=torch.float64),
        torch.tensor([x["half_width"] for x in rows], dtype=torch.float64),
        groups,
    )
    return {
        "format": FORMAT,
        "version": VERSION,
        "level": level,
        "roi_prefix": prefix,
        "size_edges_mm": list(edges),
        "bootstrap_settings": settings,
        "calibration_runs": list(names) if names is not None else len(runs),
        "calibration_rois": len(rows),
        "conformal": rc.to_dict(),
    }


def apply_roi_calibration(metrics: Mapping, calibration: Mapping) -> dict:
    """ROI-conformal intervals for the ROIs of one bootstrap run, as its ``metrics["roi_conformal"]`` block:
    ``level``, ``calibration_rois``, ``size_edges_mm``, ``roi: {name: {"interval", "factor", "group", "inside"
    (with a known truth)}}`` and, with a known truth, ``coverage``. Refuses a run whose bootstrap settings
    differ from the calibration's."""
    check_settings(calibration, metrics.get("config") or {})
    level = float(calibration["level"])
    rc = RoiConformal.from_dict(calibration["conformal"])
    out = {}
    for row in roi_rows(metrics, level, calibration["roi_prefix"], need_truth=False):
        group = size_group(row["equivalent_diameter_mm"], calibration["size_edges_mm"])
        q = rc.factor(level, group)
        lo, hi = row["centre"] - q * row["half_width"], row["centre"] + q * row["half_width"]
        entry = {"interval": [lo, hi], "factor": q, "group": group}
        if row["truth"] is not None:
            entry["inside"] = bool(lo <= row["truth"] <= hi)
        out[row["name"]] = entry
    block = {
        "level": level,
        "calibration_rois": calibration["calibration_rois"],
        "size_edges_mm": calibration["size_edges_mm"],
        "roi": out,
    }
    inside = [r["inside"] for r in out.values() if "inside" in r]
    if inside:
        block["coverage"] = sum(inside) / len(inside)
    return block


def check_settings(calibration: Mapping, config: Mapping, level: float | None = None) -> None:
    """One-line error unless the bootstrap settings ``config`` (a run's ``metrics["config"]``) are the
    calibration's (seed and number of replicates aside) and, when given, the run's interval ``level`` is the
    calibration's."""
    check_calibration(calibration)
    check_same_settings("ROI", calibration["bootstrap_settings"], config)
    if level is not None and round(float(calibration["level"]), 4) != round(level, 4):
        raise ValueError(f"the ROI calibration is for level {calibration['level']:g}: use --level to match")


def check_calibration(calibration: Mapping) -> None:
    """One-line error for a dict that is not an ROI calibration of this version."""
    check_format(calibration, FORMAT, VERSION, "an ROI", "calibrate-roi")


def save_roi_calibration(path: str | os.PathLike, calibration: Mapping) -> Path:
    check_calibration(calibration)
    return atomic_write_json(path, calibration)


def load_roi_calibration(path: str | os.PathLike) -> dict:
    """Read a calibration: the file, or the ``petuq calibrate-roi`` output folder holding it."""
    return read_calibration(path, CALIBRATION_FILE, "ROI", check_calibration)


__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_SIZE_EDGES_MM",
    "apply_roi_calibration",
    "check_calibration",
    "check_settings",
    "fit_roi_calibration",
    "load_roi_calibration",
    "roi_rows",
    "save_roi_calibration",
]
