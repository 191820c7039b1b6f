"""``petuq confidence``: anytime-valid ROI confidence intervals from the list-mode Poisson likelihood
(:func:`petuq_sirf.pipelines.confidence.confidence_for_acquisition`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petuq_sirf.backends.registry import acquisition_model_for
from petuq_sirf.cli.common import (
    add_backend_argument,
    add_device_argument,
    check_out_dir,
    load_acquisition,
    resolve_backend,
    resolve_device,
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
    p.add_argument(
        "--weights",
        default=None,
        help="unrolled weights folder or a shipped name (fbsem32w, fbsem32x, fbsem32y, fbsem32, fbsem16, dbfb); default: the shipped test-2d "
        "network fbsem32w (32-channel FBSEM, 512 phantoms per family; fbsem32 and fbsem16 = the previous defaults)",
    )
    p.add_argument("--denoiser-checkpoint", default=None, help="Bayesian denoiser folder (petuq train-denoiser)")
    p.add_argument("--ml-iterations", type=int, default=200, help="solver: EM iterations of the ML image")
    p.add_argument("--inner-iterations", type=int, default=15, help="solver: iterations per multiplier")
    p.add_argument("--grid-ratio", type=float, default=1.25, help="solver: ratio of consecutive multipliers")
    p.add_argument("--out", required=True, help="output folder (metrics.json, config.json, bounds.png)")
    add_device_argument(p)
    add_backend_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from petuq_sirf.pipelines.confidence import check_confidence_settings, confidence_for_acquisition

    options = dict(
        initial_level=args.initial_level,
        half_life_s=args.half_life_s,
        target_width=args.target_width,
        target_relative_width=args.target_relative_width,
    )
    check_confidence_settings(args.alpha, args.frames, estimators=args.estimator, **options)
    acq = load_acquisition(args.input)
    out = check_out_dir(args.out, protect=(args.input,))
    if acq.listmode is None:
        raise ValueError(f"{args.input} has no list-mode events (listmode.npz): simulate with --listmode")
    device = resolve_device(args.device)
    model = acquisition_model_for(acq, resolve_backend(args.backend), device)
    result = confidence_for_acquisition(
        acq,
        model,
        args.estimator,
        args.roi,
        args.alpha,
        args.frames,
        weights=args.weights,
        denoiser_checkpoint=args.denoiser_checkpoint,
        ml_iterations=args.ml_iterations,
        inner_iterations=args.inner_iterations,
        grid_ratio=args.grid_ratio,
        device=device,
        progress=lambda m: print(m, flush=True),
        input_name=str(Path(args.input).resolve()),
        **options,
    )
    result.write(out)
    for n in result.settings["estimators"]:
        for r in result.settings["rois"]:
            iv = result.result.intervals[n][r]
            print(
                f"{n:9s} {r:20s} final running interval [{iv['running_lower'][-1]:.4g}, {iv['running_upper'][-1]:.4g}]"
            )
    cpu_s = result.metrics["cpu_seconds"]
    print(f"confidence intervals written to {out} ({json.dumps({'cpu_s': round(cpu_s, 1)})})")
    return 0
