"""``petuq denoise``: posterior mean, uncertainty and interval images of a trained denoiser
(:func:`petuq_sirf.pipelines.denoising.denoise_image`)."""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import LEVEL, SAMPLES, SEED, check_out_dir, write_metrics
from petuq_sirf.pipelines.denoising import DenoisingInput, denoise_image


def register(sub) -> None:
    p = sub.add_parser("denoise", help="denoise an image with a trained Bayesian denoiser (mean, std, intervals)")
    p.add_argument("--model", required=True, help="Model folder written by petuq train-denoiser.")
    p.add_argument(
        "--input",
        required=True,
        help="Noisy image (.nii, .nii.gz, .hv, .npz), reconstructed like the training data, on the model's grid.",
    )
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--truth", default=None, help="True image: adds metrics.json with coverage and errors.")
    p.add_argument("--samples", type=SAMPLES, default=32, help="Posterior samples.")
    p.add_argument("--level", type=LEVEL, default=0.9, help="Credible level of the intervals.")
    p.add_argument("--seed", type=SEED, default=0, help="Seed of the posterior samples.")
    p.add_argument(
        "--force",
        action="store_true",
        help="Denoise an image whose grid or voxel size differs from the training data's (not recommended).",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    inp = DenoisingInput.load(args.model, args.input, force=args.force)  # refused before --out is created
    out = check_out_dir(args.out, protect=(args.model,))
    paths, metrics = denoise_image(inp, out, args.samples, args.level, args.seed, truth_path=args.truth)
    if metrics is not None:
        write_metrics(out, metrics)
        print(
            f"NRMSE {metrics['nrmse']:.3f} (input {metrics['nrmse_input']:.3f}); "
            f"coverage@90 {metrics['uq']['coverage']['0.90']:.3f}"
        )
    print(f"wrote {', '.join(sorted(paths))} to {out}")
    return 0
