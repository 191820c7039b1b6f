"""Voxel intervals and std maps of the posterior bootstrap, calibrated per voxel class on calibration runs.

A bootstrap run's voxel intervals ``mean -/+ z std`` describe the sampling spread of its estimator, not its
bias, so on anatomy they under-cover (edges, lesions, low-activity tissue). :func:`fit_voxel_calibration`
pools bootstrap runs on *calibration* acquisitions (known truth, e.g. ``petuq simulate --phantom
family:thorax:calibration:K``) and fits, per voxel class (:func:`petuq_sirf.uq.mondrian.voxel_classes`,
computed from the run's mean, never from the truth):

- Mondrian split-conformal quantiles of ``|truth - mean| / std`` at every level
  (:class:`petuq_sirf.uq.mondrian.MondrianConformal`): intervals ``mean -/+ q_class std``;
- per-class std factors (:class:`petuq_sirf.uq.std_scaling.MondrianStdScaling`): ``std_calibrated =
  f_class std`` has the RMS error of the mean, bias included, in every class of the calibration voxels.

:func:`apply_voxel_calibration` gives a new run both. Guarantee of the intervals: for a voxel exchangeable
with the calibration voxels of its class (same bootstrap settings, similar anatomy, counts and scanner),
coverage >= level - marginally, per class, and approximate because the voxels of one image are correlated.
It does not hold under a shift the calibration set does not contain; ``docs/posterior_bootstrap.md``
measures how far it carries from thorax calibration phantoms to held-out brain phantoms. A file is tied
to the bootstrap settings it was fitted with: applying it to a run with other settings is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.io.atomic import atomic_write_json
from petuq_sirf.pipelines.calibration_files import check_format, check_same_settings, common_settings, read_calibration
from petuq_sirf.uq.calibration import DEFAULT_LEVELS
from petuq_sirf.uq.mondrian import MondrianConformal, VoxelClassSpec, voxel_classes
from petuq_sirf.uq.std_scaling import MondrianStdScaling

FORMAT = "petuq-voxel-calibration"
CALIBRATION_FILE = "voxel_calibration.json"
VERSION = 1
DEFAULT_MIN_CLASS_SIZE = 50


@dataclass
class CalibrationRun:
    """One bootstrap run on a calibration acquisition: its settings (``metrics["config"]``), mean and std
    ``(z, y, x)``, the truth, the body mask (voxels to calibrate on) and the voxel size in mm."""

    config: Mapping
    mean: np.ndarray
    std: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    name: str = ""

    def __post_init__(self) -> None:
        shapes = {k: np.shape(getattr(self, k)) for k in ("mean", "std", "truth", "mask")}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"run {self.name or '?'}: images of different shapes {shapes}")
        if not np.asarray(self.mask, dtype=bool).any():
            raise ValueError(f"run {self.name or '?'}: no body voxels to calibrate on (empty truth)")


def fit_voxel_calibration(
    runs: Sequence[CalibrationRun],
    levels: Sequence[float] = DEFAULT_LEVELS,
    min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
    spec: VoxelClassSpec | None = None,
) -> dict:
    """Fit per-class conformal quantiles and std factors on calibration runs (see the module docstring).

    All runs must share their bootstrap settings (seed and number of replicates aside) and voxel size;
    classes with fewer than ``min_class_size`` calibration voxels use the pooled quantile / factor.
    Returns the calibration as a JSON-ready dict."""
    if not runs:
        raise ValueError("no calibration runs given")
    levels = tuple(sorted({round(float(v), 4) for v in levels}))
    if any(not 0 < v < 1 for v in levels):
        raise ValueError(f"levels must be in (0, 1), got {levels}")
    if min_class_size < 1:
        raise ValueError(f"min_class_size must be >= 1, got {min_class_size}")
    settings = common_settings([r.config for r in runs])
    sizes = {tuple(round(float(v), 6) for v in r.voxel_size_mm) for r in runs}
    if len(sizes) != 1:
        raise ValueError(f"the calibration runs have different voxel sizes {sorted(sizes)}")
    spec = spec or VoxelClassSpec()
    vox = runs[0].voxel_size_mm
    # the body voxels of all runs side by side (only those: a 3D calibration set is large); the classes come
    # from each run's own mean
    masks = [torch.as_tensor(np.asarray(r.mask, dtype=bool)) for r in runs]

    def body(arrays) -> torch.Tensor:
        return torch.cat([torch.as_tensor(a, dtype=torch.float64)[m] for a, m in zip(arrays, masks, strict=True)])

    mean, std, truth = body(r.mean for r in runs), body(r.std for r in runs), body(r.truth for r in runs)
    classes = torch.cat(
        [voxel_classes(torch.as_tensor(r.mean), vox, spec)[m] for r, m in zip(runs, masks, strict=True)]
    )
    conformal = MondrianConformal(levels=levels, min_class_size=min_class_size, spec=spec).fit(
        truth, classes, mean=mean, std=std
    )
    scaling = MondrianStdScaling(min_class_size=min_class_size).fit(truth, classes, mean=mean, std=std)
    return {
        "format": FORMAT,
        "version": VERSION,
        "levels": list(levels),
        "bootstrap_settings": settings,
        "voxel_size_mm": [float(v) for v in vox],
        "calibration_runs": [r.name for r in runs],
        "calibration_voxels": int(mean.numel()),
        "conformal": conformal.to_dict(),
        "std_scaling": scaling.to_dict(),
    }


def apply_voxel_calibration(
    calibration: Mapping,
    config: Mapping,
    mean: np.ndarray,
    std: np.ndarray,
    voxel_size_mm: Sequence[float],
    level: float,
) -> dict[str, np.ndarray]:
    """Calibrated images of one run: ``lower`` / ``upper`` (the class-conformal interval at ``level``),
    ``std_calibrated`` (per-class std factors) and ``voxel_class``. Refuses a run whose settings, voxel size
    or level the calibration does not cover."""
    check_settings(calibration, config, level)
    if not np.allclose(voxel_size_mm, calibration["voxel_size_mm"], rtol=1e-4):
        raise ValueError(
            f"the voxel calibration is for voxels of {calibration['voxel_size_mm']} mm, this run has "
            f"{[float(v) for v in voxel_size_mm]} mm"
        )
    conformal = MondrianConformal.from_dict(calibration["conformal"])
    scaling = MondrianStdScaling.from_dict(calibration["std_scaling"])
    m, s = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
    classes = voxel_classes(m, tuple(voxel_size_mm), conformal.spec)
    lo, hi = conformal.interval(classes, level, mean=m, std=s)
    return {
        "lower": lo.numpy(),
        "upper": hi.numpy(),
        "std_calibrated": scaling.scaled_std(classes, s).numpy(),
        "voxel_class": classes.numpy().astype(np.float32),
    }


def check_settings(calibration: Mapping, config: Mapping, level: float) -> None:
    """One-line error unless ``calibration`` is a voxel calibration for the bootstrap settings ``config``
    (seed and number of replicates aside) with quantiles at ``level``."""
    check_calibration(calibration)
    check_same_settings("voxel", calibration["bootstrap_settings"], config)
    if not any(abs(float(v) - level) < 1e-6 for v in calibration["levels"]):
        have = ", ".join(f"{float(v):g}" for v in calibration["levels"])
        raise ValueError(f"the voxel calibration has no quantiles for level {level:g} (it has {have}): use --level")


def check_calibration(calibration: Mapping) -> None:
    """One-line error for a dict that is not a voxel calibration of this version."""
    check_format(calibration, FORMAT, VERSION, "a voxel", "calibrate-voxels")


def save_voxel_calibration(path: str | os.PathLike, calibration: Mapping) -> Path:
    check_calibration(calibration)
    return atomic_write_json(path, calibration)


def load_voxel_calibration(path: str | os.PathLike) -> dict:
    """Read a calibration: the file, or the ``petuq calibrate-voxels`` output folder holding it."""
    return read_calibration(path, CALIBRATION_FILE, "voxel", check_calibration)


__all__ = [
    "CALIBRATION_FILE",
    "CalibrationRun",
    "apply_voxel_calibration",
    "check_calibration",
    "check_settings",
    "fit_voxel_calibration",
    "load_voxel_calibration",
    "save_voxel_calibration",
]
