"""``petuq evaluate-uq``: the frequentist coverage protocol for one or more trained denoisers.

A held-out phantom is simulated ``--realisations`` times at one dose, reconstructed like the training
data and denoised; the coverage of the truth per nominal level and per region, before and after the
model's split-conformal recalibration, goes to ``metrics.json``; panels, calibration curves and
z-score histograms to PNG. The protocol is :func:`petuq_sirf.pipelines.denoising.evaluate_denoisers`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import SAMPLES, SEED, check_out_dir, float_in, int_in, write_metrics
from petuq_sirf.pipelines.denoising import evaluate_denoisers


def register(sub) -> None:
    p = sub.add_parser("evaluate-uq", help="coverage of trained denoisers over noise realisations of a phantom")
    p.add_argument(
        "--model", action="append", required=True, help="Model folder from petuq train-denoiser (repeat for several)."
    )
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--phantom", default="nema", help="Held-out phantom: nema, brain or ellipses.")
    p.add_argument(
        "--dose",
        type=float_in(0, 1000, lo_open=True),
        default=0.05,
        help="Dose fraction of the model's standard counts.",
    )
    p.add_argument("--realisations", type=int_in(2, 100_000), default=20, help="Noise realisations M.")
    p.add_argument("--samples", type=SAMPLES, default=32, help="Posterior samples per image.")
    p.add_argument("--seed", type=SEED, default=1234, help="Seed of the phantom and the noise realisations.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.realisations < 2:
        raise ValueError(f"--realisations must be >= 2, got {args.realisations}")
    out = check_out_dir(args.out, protect=tuple(args.model))
    metrics = evaluate_denoisers(
        args.model, out, args.phantom, args.dose, args.realisations, args.samples, args.seed, report=print
    )
    write_metrics(out, metrics)
    print(metrics["table"])
    return 0
