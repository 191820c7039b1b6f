"""``petuq confidence``: anytime-valid ROI confidence intervals from the list-mode Poisson likelihood."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from petuq_sirf.backends.registry import acquisition_model_for
from petuq_sirf.cli.common import (
    add_backend_argument,
    add_device_argument,
    check_out_dir,
    load_acquisition,
    resolve_backend,
    resolve_device,
    write_metrics,
)


def register(sub) -> None:
    p = sub.add_parser(
        "confidence",
        help="ROI confidence intervals with guaranteed coverage (sequential likelihood mixing over time frames)",
    )
    p.add_argument("input", help="acquisition folder with list-mode events (petuq simulate --listmode)")
    p.add_argument(
        "--estimator",
        action="append",
        default=None,
        help="predictable estimator(s): osem, map-rdp, unrolled, denoiser (repeat or comma-separate; default osem)",
    )
    p.add_argument("--roi", action="append", default=None, help="ROI name(s) of the folder's regions (default: all)")
    p.add_argument("--alpha", type=float, default=0.1, help="miscoverage: intervals hold with probability >= 1 - alpha")
    p.add_argument(
        "--frames", type=int, default=10, help="equal time frames (frame 1 is a burn-in without --initial-level)"
    )
    p.add_argument(
        "--initial-level",
        type=float,
        default=None,
        help="data-free first guess for frame 1: a uniform image of this value (image units); default: burn-in frame",
    )
    p.add_argument("--half-life-s", type=float, default=None, help="isotope half-life for the frames' count shares")
    p.add_argument("--target-width", type=float, default=None, help="absolute interval width for 'scan time needed'")
    p.add_argument(
        "--target-relative-width", type=float, default=None, help="width / midpoint for 'scan time needed' (e.g. 0.2)"
    )
    p.add_argument("--weights", default=None, help="unrolled weights (default: the shipped test-2d network)")
    p.add_argument("--denoiser-checkpoint", default=None, help="Bayesian denoiser folder (petuq train-denoiser)")
    p.add_argument("--ml-iterations", type=int, default=200, help="solver: EM iterations of the ML image")
    p.add_argument("--inner-iterations", type=int, default=15, help="solver: iterations per multiplier")
    p.add_argument("--grid-ratio", type=float, default=1.25, help="solver: ratio of consecutive multipliers")
    p.add_argument("--out", required=True, help="output folder (metrics.json, config.json, bounds.png)")
    add_device_argument(p)
    add_backend_argument(p)
    p.set_defaults(handler=run)


def _estimator_names(values: list[str] | None) -> list[str]:
    from petuq_sirf.confidence.estimators import ESTIMATORS

    names = [n.strip() for v in (values or ["osem"]) for n in v.split(",") if n.strip()]
    for n in names:
        if n not in ESTIMATORS:
            raise ValueError(f"unknown estimator {n!r}; choose from {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    from petuq_sirf.confidence.estimators import make_estimator
    from petuq_sirf.confidence.roi_solver import SolverConfig
    from petuq_sirf.confidence.sets import check_alpha, confidence_intervals, frame_listmode, scan_time_needed
    from petuq_sirf.viz.confidence_figures import confidence_figure

    alpha = check_alpha(args.alpha)
    if args.frames < 2 and args.initial_level is None:
        raise ValueError("--frames must be >= 2 (frame 1 is a burn-in), or give --initial-level")
    for name in ("target_width", "target_relative_width", "initial_level", "half_life_s"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    names = _estimator_names(args.estimator)
    acq = load_acquisition(args.input)
    out = check_out_dir(args.out, protect=(args.input,))
    if acq.listmode is None:
        raise ValueError(f"{args.input} has no list-mode events (listmode.npz): simulate with --listmode")
    device = resolve_device(args.device)
    model = acquisition_model_for(acq, resolve_backend(args.backend), device)
    if not acq.regions:
        raise ValueError(f"{args.input} has no ROI masks (regions.npz)")
    rois = args.roi or list(acq.regions)
    missing = [r for r in rois if r not in acq.regions]
    if missing:
        raise ValueError(f"unknown ROI {missing[0]!r}; the folder has {', '.join(acq.regions)}")
    masks = {r: acq.regions[r] for r in rois}
    duration = float(acq.info.get("config", {}).get("duration_s") or 0) or None
    frames = frame_listmode(acq.listmode, args.frames, duration_s=duration, half_life_s=args.half_life_s)
    estimators = {}
    for n in names:
        if n == "unrolled":
            from petuq_sirf.recon.weights import load_network as load_weights

            net, _, _ = load_weights("unrolled", args.weights)
            estimators[n] = make_estimator(n, net=net.to(device))
        else:
            estimators[n] = make_estimator(n, checkpoint=args.denoiser_checkpoint)
    initial = None
    if args.initial_level is not None:
        sens = model.sensitivity()
        initial = torch.where(sens > 0, torch.full_like(sens, args.initial_level), torch.zeros_like(sens))
    config = SolverConfig(
        ml_iterations=args.ml_iterations, inner_iterations=args.inner_iterations, grid_ratio=args.grid_ratio
    )
    t0 = time.process_time()
    res = confidence_intervals(
        model, frames, estimators, masks, alpha, initial, acq.truth, config, progress=lambda m: print(m, flush=True)
    )
    cpu_s = time.process_time() - t0
    metrics = {"command": "confidence", **res.to_dict(), "cpu_seconds": cpu_s}
    needed: dict = {}
    for n in names:
        for r in rois:
            entry = {}
            if args.target_width:
                entry["absolute"] = scan_time_needed(res, n, r, args.target_width)
            if args.target_relative_width:
                entry["relative"] = scan_time_needed(res, n, r, args.target_relative_width, relative=True)
            if entry:
                needed.setdefault(n, {})[r] = entry
    if needed:
        metrics["scan_time_needed_s"] = needed
    settings = {
        "input": str(Path(args.input).resolve()),
        "estimators": names,
        "rois": rois,
        "alpha": alpha,
        "frames": args.frames,
        "frame_edges_s": frames.edges_s,
        "initial_level": args.initial_level,
        "half_life_s": args.half_life_s,
        "target_width": args.target_width,
        "target_relative_width": args.target_relative_width,
        "solver": config.__dict__,
        "device": str(device),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, settings, "config.json")
    write_metrics(out, metrics)
    title = (
        f"{acq.info.get('scanner', '')}: running {100 * (1 - alpha):.0f}% anytime-valid ROI intervals, "
        f"{args.frames} frames, {int(frames.counts.sum())} prompts" + (" (frame 1 burn-in)" if initial is None else "")
    )
    confidence_figure(res.frame_end_s, res.intervals, out / "bounds.png", res.truth_roi, title)
    for n in names:
        for r in rois:
            iv = res.intervals[n][r]
            print(
                f"{n:9s} {r:20s} final running interval [{iv['running_lower'][-1]:.4g}, {iv['running_upper'][-1]:.4g}]"
            )
    print(f"confidence intervals written to {out} ({json.dumps({'cpu_s': round(cpu_s, 1)})})")
    return 0
