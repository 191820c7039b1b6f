"""``petuq denoise``: posterior mean, uncertainty and interval images of a trained denoiser."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.bayes.checkpoint import checkpoint_info, load_denoiser
from petuq_sirf.bayes.grid import check_denoiser_grid
from petuq_sirf.cli.common import LEVEL, SAMPLES, SEED, check_out_dir, write_metrics
from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.uq import calibration as cal
from petuq_sirf.uq.figures_of_merit import nrmse, psnr


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
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input image {args.input} not found")
    model = load_denoiser(args.model)
    record = checkpoint_info(args.model)
    scales = {float(k): v for k, v in record.get("extra", {}).get("conformal_scales", {}).items()}
    array, geometry = read_image(args.input)
    check_denoiser_grid(record, geometry, force=args.force, what=f"--input {args.input}")
    out = check_out_dir(args.out, protect=(args.model,))
    noisy = torch.from_numpy(np.ascontiguousarray(array)).float()
    post = model.predict(noisy, args.samples, args.seed)  # z slices as a batch
    paths = post.write(out, geometry, level=args.level)
    mean, std = post.predictive_mean, post.total_std
    level_key = min(scales, key=lambda k: abs(k - args.level)) if scales else None
    if level_key is not None and abs(level_key - args.level) < 1e-6:
        lo, hi = cal.gaussian_interval(mean, std, args.level, scales[level_key])
        pct = int(round(args.level * 100))
        paths[f"lower{pct}_conformal"] = write_image(out / f"lower{pct}_conformal.nii.gz", lo.numpy(), geometry)
        paths[f"upper{pct}_conformal"] = write_image(out / f"upper{pct}_conformal.nii.gz", hi.numpy(), geometry)
    if args.truth:
        truth_array, truth_geometry = read_image(args.truth)
        if truth_array.shape != array.shape:
            raise ValueError(f"truth shape {truth_array.shape} differs from the input shape {array.shape}")
        truth = torch.from_numpy(np.ascontiguousarray(truth_array)).float()
        mask = truth > 0
        metrics = {
            "command": "denoise",
            "model": str(args.model),
            "nrmse": nrmse(mean, truth, mask),
            "nrmse_input": nrmse(noisy, truth, mask),
            "psnr_db": psnr(mean, truth, mask),
            "psnr_input_db": psnr(noisy, truth, mask),
            "uq": cal.evaluate_uq(truth, mean=mean, std=std, mask=mask),
        }
        if scales:
            metrics["uq_conformal"] = cal.evaluate_uq(truth, mean=mean, std=std, mask=mask, scale=scales)
        write_metrics(out, metrics)
        print(
            f"NRMSE {metrics['nrmse']:.3f} (input {metrics['nrmse_input']:.3f}); coverage@90 {metrics['uq']['coverage']['0.90']:.3f}"
        )
    print(f"wrote {', '.join(sorted(paths))} to {out}")
    return 0
