"""``petuq calibrate-voxels``: per-voxel-class calibration of bootstrap intervals and std maps on calibration runs.

Reads ``petuq bootstrap`` runs on acquisitions with a known truth (e.g. simulated with ``--phantom
family:thorax:calibration:K``): each run's ``mean`` and ``std`` images and ``metrics.json``, and the truth of
the acquisition the run recorded (its ``bootstrap.json``). Fits, per voxel class of the run's mean, the
split-conformal quantiles of ``|truth - mean| / std`` and the std factors
(:func:`petuq_sirf.pipelines.voxel_calibration.fit_voxel_calibration`) and writes them to
``--out/voxel_calibration.json`` for ``petuq bootstrap --voxel-calibration``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petuq_sirf.cli.common import LEVEL, check_out_dir, int_in
from petuq_sirf.io.acquisition_folder import load_acquisition
from petuq_sirf.io.image_io import read_image
from petuq_sirf.pipelines.bootstrap import body_mask
from petuq_sirf.pipelines.voxel_calibration import (
    CALIBRATION_FILE,
    DEFAULT_MIN_CLASS_SIZE,
    CalibrationRun,
    fit_voxel_calibration,
    save_voxel_calibration,
)
from petuq_sirf.uq.calibration import DEFAULT_LEVELS


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate-voxels",
        help="fit per-voxel-class conformal intervals and std factors on bootstrap runs of calibration acquisitions",
    )
    p.add_argument("runs", nargs="+", help="Output folders of 'petuq bootstrap' on acquisitions with a known truth.")
    p.add_argument(
        "--out",
        required=True,
        help=f"Output folder: {CALIBRATION_FILE} is written there (an existing calibration is never overwritten).",
    )
    p.add_argument(
        "--level",
        type=LEVEL,
        action="append",
        default=None,
        help="Coverage level to calibrate (repeat for several; default "
        + ", ".join(f"{v:g}" for v in DEFAULT_LEVELS)
        + "); 'petuq bootstrap --level' must be one of them.",
    )
    p.add_argument(
        "--min-class-size",
        type=int_in(1, 10**9),
        default=DEFAULT_MIN_CLASS_SIZE,
        help="Voxel classes with fewer calibration voxels use the pooled quantile and factor.",
    )
    p.set_defaults(handler=run)


def _load_run(folder: str) -> CalibrationRun:
    run_dir = Path(folder)
    metrics_path, manifest_path = run_dir / "metrics.json", run_dir / "bootstrap.json"
    if not metrics_path.is_file() or not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not a 'petuq bootstrap' output folder: metrics.json is missing")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("command") != "bootstrap":
        raise ValueError(f"{metrics_path} was not written by 'petuq bootstrap'")
    source = json.loads(manifest_path.read_text()).get("input")
    if not source or not Path(source).is_dir():
        raise FileNotFoundError(f"{folder}: its input acquisition {source or '(not recorded)'} is not there any more")
    acq = load_acquisition(source)
    mask = body_mask(acq)
    if acq.truth is None or mask is None:
        raise ValueError(f"{folder}: its acquisition {source} has no known truth: calibrate on simulated data")
    mean, _ = read_image(run_dir / "mean.nii.gz")
    std, _ = read_image(run_dir / "std.nii.gz")
    return CalibrationRun(
        metrics.get("config") or {},
        mean,
        std,
        acq.truth.numpy(),
        mask.numpy(),
        tuple(acq.image.voxel_size_mm),
        name=str(folder),
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) / CALIBRATION_FILE
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (calibrations are never overwritten)")
    runs = [_load_run(f) for f in args.runs]
    levels = tuple(args.level) if args.level else DEFAULT_LEVELS
    calibration = fit_voxel_calibration(runs, levels, args.min_class_size)
    check_out_dir(args.out, protect=tuple(args.runs))
    save_voxel_calibration(out, calibration)
    conf = calibration["conformal"]
    fitted = sum(1 for n in conf["class_counts"].values() if n >= args.min_class_size)
    q90 = conf["global_quantiles"].get("0.90")
    pooled = f"; pooled q(0.90) = {q90:.2f}" if q90 is not None else ""
    print(
        f"{calibration['calibration_voxels']} calibration voxels from {len(runs)} runs, {fitted} of "
        f"{len(conf['class_counts'])} voxel classes fitted{pooled}; written to {out}"
    )
    return 0
