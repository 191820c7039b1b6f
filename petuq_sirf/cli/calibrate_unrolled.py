"""``petuq calibrate-unrolled``: add split-conformal interval scales to an unrolled weights folder (no retraining).

The calibration is :func:`petuq_sirf.pipelines.network_training.calibrate_unrolled_network`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import (
    SEED,
    add_calibration_arguments,
    add_device_argument,
    calibration_settings_from,
    check_out_dir,
    command_line,
    resolve_device,
)


def register(sub) -> None:
    c = sub.add_parser(
        "calibrate-unrolled",
        help="add split-conformal interval scales to an unrolled weights file (no retraining)",
    )
    c.add_argument(
        "--weights",
        default=None,
        help="Input weights (default: the shipped unrolled network fbsem32w; or fbsem32x, fbsem32y, fbsem32, fbsem16, dbfb).",
    )
    c.add_argument("--seed", type=SEED, default=0, help="Calibration phantoms use seeds from seed + 2000.")
    c.add_argument("--out", required=True, help="Output weights folder (may equal --weights).")
    add_calibration_arguments(c)
    add_device_argument(c)
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Add split-conformal scales to an existing unrolled weights file (weights unchanged)."""
    from petuq_sirf.pipelines.network_training import calibrate_unrolled_network

    calibration = calibration_settings_from(args)
    if calibration.phantoms < 1:
        raise ValueError("--calibration-phantoms must be >= 1")
    check_out_dir(args.out)
    trained = calibrate_unrolled_network(
        args.weights,
        calibration,
        resolve_device(args.device),
        command=command_line("calibrate-unrolled", args, skip_none=True),
    )
    path = trained.save(args.out)
    scales = trained.info["conformal_scales"]
    print(f"conformal std scales written to {path}: " + ", ".join(f"{k}: {v:.3f}" for k, v in scales.items()))
    return 0
