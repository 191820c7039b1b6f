"""Calibrated bootstrap error bars with the library API: lesion ROI intervals and voxel maps that carry the bias.

The bootstrap's spread is the sampling spread of its estimator; it misses the estimator's bias. This
example calibrates both the lesion ROI-mean intervals and the voxel intervals on simulated *calibration*
phantoms with a known truth (thorax and the generic texture family, taken in turn), then applies them to a
*test* phantom of another family (brain)
and reports the coverage there - the recipe of ``petuq calibrate-roi`` / ``petuq calibrate-voxels``
(``docs/posterior_bootstrap.md``), written as Python.

Run:  python examples/calibrated_bootstrap.py --out calibrated_example [--calibration 12] [--counts 5e4]
            [--families thorax,texture]
      python examples/calibrated_bootstrap.py --out /tmp/cb --quick      # a minute: 3 phantoms, level 0.5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petuq_sirf.bootstrap import BootstrapConfig
from petuq_sirf.io.acquisition_folder import load_acquisition, save_acquisition
from petuq_sirf.pipelines.bootstrap import body_mask, bootstrap_acquisition
from petuq_sirf.pipelines.roi_calibration import fit_roi_calibration
from petuq_sirf.pipelines.voxel_calibration import CalibrationRun, fit_voxel_calibration
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, simulate
from petuq_sirf.simulation.phantom_families import family_phantoms


def acquisition(family: str, split: str, index: int, counts: float, folder: Path):
    """Simulate phantom ``index`` of ``family`` / ``split`` (list-mode) into ``folder`` and load it back."""
    layout = SinogramLayout(get_scanner("test-2d"))
    (phantom,) = family_phantoms(family, ImageGeometry.for_layout(layout), split, 1, start=index)
    sim = simulate(phantom, layout, SimulationConfig(true_counts=counts, listmode=True, seed=1000 + index))
    save_acquisition(sim, folder)
    return load_acquisition(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (acquisitions, bootstrap runs, summary)")
    parser.add_argument("--calibration", type=int, default=12, help="calibration phantoms (all families)")
    parser.add_argument(
        "--families",
        default="thorax,texture",
        help="calibration families, taken in turn (never brain: it is the test family here)",
    )
    parser.add_argument("--counts", type=float, default=5e4, help="expected true counts (5 % of a standard dose)")
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 calibration phantoms, 4 replicates, level 0.5")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    if not families or "brain" in families:
        parser.error("--families: one or more families other than brain (the test family)")
    level = 0.9
    if args.quick:
        args.calibration, args.replicates, level = 3, 4, 0.5
    out = Path(args.out)
    # unfiltered OSEM, 5 passes x 8 subsets per replicate: the choice for 5 % dose in docs/posterior_bootstrap.md
    config = BootstrapConfig(num_replicates=args.replicates, estimator="osem", num_iterations=5)

    runs, metrics = [], []
    for k in range(args.calibration):
        family, index = families[k % len(families)], k // len(families)
        name = f"{family}_cal_{index}"
        acq = acquisition(family, "calibration", index, args.counts, out / "acq" / name)
        run = bootstrap_acquisition(acq, config, out / "boot" / name, level=level)
        runs.append(
            CalibrationRun(
                run.metrics["config"],
                run.images["mean"],
                run.images["std"],
                acq.truth.numpy(),
                body_mask(acq).numpy(),
                acq.image.voxel_size_mm,
                name=name,
            )
        )
        metrics.append(run.metrics)
        print(f"calibration phantom {name}: {run.metrics['replicates']} replicates")
    roi_cal = fit_roi_calibration(metrics, level=level)
    voxel_cal = fit_voxel_calibration(runs, levels=(level,))

    acq = acquisition("brain", "test", 0, args.counts, out / "acq" / "brain_test_0")
    run = bootstrap_acquisition(
        acq,
        config,
        out / "boot" / "brain_test_0",
        level=level,
        roi_calibration=roi_cal,
        voxel_calibration=voxel_cal,
    )
    run.write(out / "boot" / "brain_test_0")  # images (calibrated ones included), metrics.json, bootstrap.png
    m = run.metrics
    summary = {
        "level": level,
        "calibration_phantoms": args.calibration,
        "calibration_families": families,
        "calibration_lesions": roi_cal["calibration_rois"],
        "voxels_raw_coverage": m["gaussian"]["coverage"][f"{level:.2f}"],
        "voxels_calibrated_coverage": m["voxel_conformal"]["coverage"],
        "voxels_std_calibrated_over_rmse": m["voxel_conformal"]["std_calibrated_over_rmse"],
        "lesions_calibrated_coverage": m["roi_conformal"].get("coverage"),
        "lesions": {
            name: {"truth": m["roi"][name]["truth"], "interval": entry["interval"], "inside": entry["inside"]}
            for name, entry in m["roi_conformal"]["roi"].items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "lesions"}, indent=2))
    print(f"figure: {out / 'boot' / 'brain_test_0' / 'bootstrap.png'}; summary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
