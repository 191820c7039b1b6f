"""``petuq calibrate-roi``: ROI-conformal factors for lesion ROI means from bootstrap runs on calibration data.

Reads the ``metrics.json`` of ``petuq bootstrap`` runs on acquisitions with a known truth (e.g. simulated
with ``--phantom family:thorax:calibration:K``), fits per lesion-size group the conformal factor of the
ROI-mean intervals and writes it to ``--out/roi_calibration.json`` for ``petuq bootstrap --roi-calibration``. The fit is
:func:`petuq_sirf.pipelines.roi_calibration.fit_roi_calibration`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petuq_sirf.cli.common import LEVEL, check_out_dir, int_in
from petuq_sirf.pipelines.roi_calibration import (
    CALIBRATION_FILE,
    DEFAULT_SIZE_EDGES_MM,
    fit_roi_calibration,
    save_roi_calibration,
)


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate-roi",
        help="fit ROI-conformal factors for lesion ROI means on bootstrap runs of calibration acquisitions",
    )
    p.add_argument("runs", nargs="+", help="Output folders of 'petuq bootstrap' on acquisitions with a known truth.")
    p.add_argument(
        "--out",
        required=True,
        help=f"Output folder: {CALIBRATION_FILE} is written there (an existing calibration is never overwritten).",
    )
    p.add_argument("--level", type=LEVEL, default=0.9, help="Coverage level of the intervals (the runs' --level).")
    p.add_argument("--roi-prefix", default="lesion_", help="Calibrate the ROIs whose names start with this.")
    p.add_argument(
        "--size-edges-mm",
        default=",".join(f"{e:g}" for e in DEFAULT_SIZE_EDGES_MM),
        help="Comma list of the equivalent-diameter edges (mm) of the lesion-size groups.",
    )
    p.add_argument(
        "--min-group-size",
        type=int_in(1, 1_000_000),
        default=10,
        help="Size groups with fewer calibration ROIs use the pooled factor.",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) / CALIBRATION_FILE
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out (calibrations are never overwritten)")
    try:
        edges = [float(e) for e in args.size_edges_mm.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"--size-edges-mm must be a comma list of numbers, got {args.size_edges_mm!r}") from None
    if not edges or any(e <= 0 for e in edges):
        raise ValueError(f"--size-edges-mm must hold positive diameters, got {args.size_edges_mm!r}")
    runs = []
    for folder in args.runs:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a 'petuq bootstrap' output folder: metrics.json is missing")
        metrics = json.loads(path.read_text())
        if metrics.get("command") != "bootstrap":
            raise ValueError(f"{path} was not written by 'petuq bootstrap'")
        runs.append(metrics)
    calibration = fit_roi_calibration(
        runs, args.level, args.roi_prefix, edges, args.min_group_size, names=[str(f) for f in args.runs]
    )
    check_out_dir(args.out, protect=tuple(args.runs))
    save_roi_calibration(out, calibration)
    conf = calibration["conformal"]
    factors = conf["quantiles"][f"{args.level:.2f}"]
    groups = ", ".join(f"{g}: q = {q:.2f} ({conf['counts'][g]} ROIs)" for g, q in factors.items())
    pooled = conf["global_quantiles"][f"{args.level:.2f}"]
    print(
        f"{calibration['calibration_rois']} calibration ROIs from {len(runs)} runs; "
        f"{groups or 'no group large enough'}; pooled q = {pooled:.2f}; written to {out}"
    )
    return 0
