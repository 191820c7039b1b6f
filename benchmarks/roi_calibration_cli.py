"""Calibrated lesion ROI intervals and voxel maps through the user's path: ``petuq simulate`` / ``bootstrap`` /
``calibrate-roi`` / ``calibrate-voxels``.

The protocol of ``benchmarks/pnp_ula_coverage.py --methods osem-bootstrap`` (split-conformal lesion ROI
intervals of the OSEM bootstrap, factors from one family, tested on another), run as a user would: every
step is a ``petuq`` command (called in-process through ``petuq_sirf.cli.main.main``), every acquisition
and bootstrap run a folder under ``--work``.

1. ``--calibration`` phantoms ``family:<F>:calibration:<k>`` of each family F of ``--calibration-family``
   (a comma-separated list, never the test family; k from ``--calibration-start``), one noise realisation each: ``petuq simulate`` then ``petuq bootstrap
   --estimator osem``;
2. ``petuq calibrate-roi`` and ``petuq calibrate-voxels`` over those runs;
3. ``--test`` phantoms ``family:<--test-family>:test:<k>``: ``petuq simulate`` then ``petuq bootstrap
   --estimator osem --roi-calibration --voxel-calibration``;
4. the coverage of the calibrated (and raw) 90 % lesion intervals pooled over the test lesions, per size
   group, with median widths, and of the class-calibrated 90 % voxel intervals pooled over the test
   phantoms' body voxels; printed and written to ``--work/roi_calibration_cli.json``.

Resumable: a step whose output exists is skipped (the bootstrap itself resumes inside its store). The
default phantom indices (100 on) are disjoint from those of ``pnp_ula_coverage.py`` (2-31 calibration,
0-23 test), so this is an independent sample.

    PYTHONPATH=$PWD python benchmarks/roi_calibration_cli.py --work /tmp/roi_cli                # ~8 CPU-min
    PYTHONPATH=$PWD python benchmarks/roi_calibration_cli.py --work /tmp/roi_cli --counts 1e6 --iterations 20
    PYTHONPATH=$PWD python benchmarks/roi_calibration_cli.py --work /tmp/roi_cli_tex --calibration-family thorax,texture
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def petuq(*argv: str) -> None:
    from petuq_sirf.cli.main import main

    status = main(["--quiet", *argv])
    if status != 0:
        raise SystemExit(f"roi_calibration_cli: 'petuq {' '.join(argv)}' failed (status {status})")


def run_dirs(work: Path, family: str, split: str, index: int) -> tuple[Path, Path]:
    """The acquisition and bootstrap folders of phantom ``index`` of ``family``/``split``."""
    name = f"{family}_{split}_{index}"
    return work / "acq" / name, work / "boot" / name


def _needs_bootstrap(boot: Path, extra: list[str]) -> bool:
    """No metrics yet, metrics written before a voxel calibration was asked for, or with other calibration
    folders than ``extra`` names (a run copied from another work folder); a rerun only summarises."""
    metrics = boot / "metrics.json"
    if not metrics.is_file():
        return True
    if "--voxel-calibration" in extra and "voxel_conformal" not in json.loads(metrics.read_text()):
        return True
    config = boot / "run_config.json"
    options = json.loads(config.read_text()).get("options", {}) if config.is_file() else {}
    for flag, key in (("--roi-calibration", "roi_calibration"), ("--voxel-calibration", "voxel_calibration")):
        if flag in extra and options.get(key) != extra[extra.index(flag) + 1]:
            return True
    return False


def acquire_and_bootstrap(work: Path, family: str, split: str, index: int, args, extra: list[str]) -> Path:
    """Simulate phantom ``index`` of ``family``/``split`` and bootstrap it; returns the bootstrap folder."""
    acq, boot = run_dirs(work, family, split, index)
    if not (acq / "acquisition.json").is_file():
        seed = (0 if split == "calibration" else 500_000) + index
        petuq(
            "simulate",
            "--phantom",
            f"family:{family}:{split}:{index}",
            "--counts",
            f"{args.counts:g}",
            "--listmode",
            "--seed",
            str(seed),
            "--out",
            str(acq),
        )
    if _needs_bootstrap(boot, extra):
        petuq(
            "bootstrap",
            str(acq),
            "--estimator",
            "osem",
            "--iterations",
            str(args.iterations),
            "--replicates",
            str(args.replicates),
            "--seed",
            str(index),
            *extra,
            "--out",
            str(boot),
        )
    return boot


def summarise(test_runs: list[Path], level: float) -> dict:
    rows = []
    for folder in test_runs:
        m = json.loads((folder / "metrics.json").read_text())
        for name, entry in m["roi_conformal"]["roi"].items():
            post = m["roi"][name]
            lo, hi = post[f"interval_{level:.2f}"]
            t = post["truth"]
            rows.append(
                {
                    "group": entry["group"],
                    "raw": bool(lo <= t <= hi),
                    "calibrated": bool(entry["inside"]),
                    "width": (entry["interval"][1] - entry["interval"][0]) / t,
                    "bias": post["mean"] / t - 1.0,
                }
            )

    def block(rs: list[dict]) -> dict:
        if not rs:
            return {"count": 0}
        return {
            "count": len(rs),
            "raw_coverage": float(np.mean([r["raw"] for r in rs])),
            "coverage": float(np.mean([r["calibrated"] for r in rs])),
            "median_rel_width": float(np.median([r["width"] for r in rs])),
            "median_rel_bias": float(np.median([r["bias"] for r in rs])),
        }

    groups = sorted({r["group"] for r in rows})
    return {"all": block(rows), **{g: block([r for r in rows if r["group"] == g]) for g in groups}}


def summarise_voxels(test_runs: list[Path], level: float) -> dict:
    """Coverage of the raw (``mean -/+ z std``) and class-calibrated voxel intervals, pooled over the test runs'
    body voxels; per run the calibrated std over the RMS error and the mean width over the mean uptake."""
    n, raw, cal, ratio, width = [], [], [], [], []
    for folder in test_runs:
        m = json.loads((folder / "metrics.json").read_text())
        v = m["voxel_conformal"]
        n.append(v["body_voxels"])
        raw.append(m["gaussian"]["coverage"][f"{level:.2f}"])
        cal.append(v["coverage"])
        ratio.append(v["std_calibrated_over_rmse"])
        width.append(v["mean_width_over_mean_truth"])
    w = np.asarray(n, dtype=float)
    return {
        "runs": len(n),
        "body_voxels": int(w.sum()),
        "raw_coverage": float(np.average(raw, weights=w)),
        "coverage": float(np.average(cal, weights=w)),
        "coverage_per_run_min_max": [float(min(cal)), float(max(cal))],
        "std_calibrated_over_rmse_median_min_max": [float(np.median(ratio)), float(min(ratio)), float(max(ratio))],
        "median_width_over_uptake": float(np.median(width)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="working folder (acquisitions, bootstrap runs, calibration)")
    p.add_argument("--counts", type=float, default=5e4, help="expected true counts per acquisition (test-2d)")
    p.add_argument("--iterations", type=int, default=5, help="OSEM passes of the bootstrap (8 subsets)")
    p.add_argument("--replicates", type=int, default=10)
    p.add_argument(
        "--calibration-family",
        default="thorax",
        help="family of the calibration phantoms, or a comma-separated list (--calibration phantoms of each)",
    )
    p.add_argument("--test-family", default="brain")
    p.add_argument("--calibration", type=int, default=40, help="calibration phantoms")
    p.add_argument("--test", type=int, default=60, help="test phantoms")
    p.add_argument("--calibration-start", type=int, default=100)
    p.add_argument("--test-start", type=int, default=100)
    p.add_argument("--part", choices=("all", "calibration", "test"), default="all")
    p.add_argument("--first", type=int, default=0, help="with --part: first phantom of this process (to split)")
    p.add_argument("--count", type=int, default=None, help="with --part: phantoms of this process")
    args = p.parse_args()
    from petuq_sirf.pipelines.roi_calibration import load_roi_calibration

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()

    def indices(start: int, total: int) -> list[int]:
        sel = range(args.first, total if args.count is None else min(total, args.first + args.count))
        return [start + i for i in sel] if args.part != "all" else [start + i for i in range(total)]

    cal_families = [f for f in args.calibration_family.split(",") if f]
    if args.test_family in cal_families:
        raise SystemExit(f"roi_calibration_cli: error: the test family {args.test_family} is also a calibration family")
    if args.part in ("all", "calibration"):
        for family in cal_families:
            for k in indices(args.calibration_start, args.calibration):
                acquire_and_bootstrap(work, family, "calibration", k, args, [])
                print(f"calibration {family} {k}: CPU {time.process_time() - t0:.0f} s", flush=True)
        if args.part == "calibration":
            return
    cal_runs = [
        str(run_dirs(work, family, "calibration", args.calibration_start + i)[1])
        for family in cal_families
        for i in range(args.calibration)
    ]
    rc, vc = work / "roi_calibration", work / "voxel_calibration"
    for command, folder in (("calibrate-roi", rc), ("calibrate-voxels", vc)):
        if not (folder / f"{folder.name}.json").is_file():
            petuq(command, *cal_runs, "--out", str(folder))
    test_runs = []
    for k in indices(args.test_start, args.test):
        extra = ["--roi-calibration", str(rc), "--voxel-calibration", str(vc)]
        test_runs.append(acquire_and_bootstrap(work, args.test_family, "test", k, args, extra))
        print(f"test {k}: CPU {time.process_time() - t0:.0f} s", flush=True)
    if args.part == "test" and args.count is not None:
        return
    calibration = load_roi_calibration(rc)
    result = {
        "settings": vars(args),
        "calibration_rois": calibration["calibration_rois"],
        "factors": calibration["conformal"]["quantiles"],
        "pooled_factor": calibration["conformal"]["global_quantiles"],
        "test": summarise(test_runs, float(calibration["level"])),
        "voxels": summarise_voxels(test_runs, float(calibration["level"])),
        "cpu_s": time.process_time() - t0,
    }
    (work / "roi_calibration_cli.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n{args.test_family} test lesions, factors from {calibration['calibration_rois']} "
        f"{args.calibration_family} calibration lesions ({args.counts:g} counts, OSEM {args.iterations} passes):\n"
    )
    print("| lesions | n | raw 90 % coverage | calibrated coverage | median width / uptake | median bias |")
    print("|---|---|---|---|---|---|")
    for name, b in result["test"].items():
        if b["count"]:
            print(
                f"| {name} | {b['count']} | {b['raw_coverage']:.2f} | {b['coverage']:.2f} | "
                f"{b['median_rel_width']:.2f} | {b['median_rel_bias']:+.2f} |"
            )
    v = result["voxels"]
    print(
        f"\nVoxels ({v['runs']} test phantoms, {v['body_voxels']} body voxels), 90 % intervals: raw coverage "
        f"{v['raw_coverage']:.3f}, class-calibrated {v['coverage']:.3f} (per phantom "
        f"{v['coverage_per_run_min_max'][0]:.2f}-{v['coverage_per_run_min_max'][1]:.2f}); median width / uptake "
        f"{v['median_width_over_uptake']:.2f}; std_calibrated / RMSE per phantom: median "
        f"{v['std_calibrated_over_rmse_median_min_max'][0]:.2f} (min {v['std_calibrated_over_rmse_median_min_max'][1]:.2f}, "
        f"max {v['std_calibrated_over_rmse_median_min_max'][2]:.2f})"
    )
    print(f"\nJSON written to {work / 'roi_calibration_cli.json'}")


if __name__ == "__main__":
    main()
