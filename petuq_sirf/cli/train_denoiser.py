"""``petuq train-denoiser``: simulate training pairs, train a Bayesian denoiser, save it safely.

The model folder holds ``model.safetensors`` and ``config.json`` (configuration, training data settings,
training diagnostics, and split-conformal scale factors fitted on held-out phantoms).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from petuq_sirf.bayes.checkpoint import save_denoiser
from petuq_sirf.bayes.denoisers import METHODS, DenoiserConfig, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset, evaluate_on_dataset
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig, load_or_generate
from petuq_sirf.cli.common import write_metrics


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training data")
    g.add_argument("--scanner", default="test-2d", help="scanner of the simulated data (default test-2d)")
    g.add_argument("--phantoms", type=int, default=40, help="random phantoms (default 40)")
    g.add_argument("--doses", type=_floats, default=(0.02, 0.05, 0.1), help="dose fractions (default 0.02,0.05,0.1)")
    g.add_argument("--standard-counts", type=float, default=1e6, help="true counts of full dose (default 1e6)")
    g.add_argument("--osem-iterations", type=int, default=4)
    g.add_argument("--osem-subsets", type=int, default=8)
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--cache", default=None, help="folder caching the simulated pairs (.npz)")


def data_config_from(args: argparse.Namespace) -> DenoisingDataConfig:
    return DenoisingDataConfig(
        scanner=args.scanner,
        num_phantoms=args.phantoms,
        dose_fractions=tuple(args.doses),
        standard_counts=args.standard_counts,
        osem_iterations=args.osem_iterations,
        osem_subsets=args.osem_subsets,
        seed=args.data_seed,
    )


def _families(text: str | None) -> list[str]:
    from petuq_sirf.simulation.phantom_families import FAMILIES

    names = [v.strip() for v in (text or "").split(",") if v.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown phantom families {bad}; choose from {', '.join(FAMILIES)}")
    return names


def register(sub) -> None:
    p = sub.add_parser("train-denoiser", help="train a Bayesian denoiser (SVI, AIS, MC dropout, ensemble)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--method", default="svi", choices=METHODS, help="inference method (default svi)")
    p.add_argument("--epochs", type=int, default=30, help="point-estimate training epochs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=24, help="channels of the CNN")
    p.add_argument("--prior-scale", type=float, default=1.0, help="std of the Normal weight prior")
    p.add_argument("--svi-steps", type=int, default=300)
    p.add_argument("--svi-lr", type=float, default=1e-3)
    p.add_argument("--ais-iterations", type=int, default=8)
    p.add_argument("--ais-proposals", type=int, default=10)
    p.add_argument("--ais-samples", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--ensemble-size", type=int, default=4)
    p.add_argument("--calibration-fraction", type=float, default=0.2, help="phantoms held out for conformal")
    p.add_argument(
        "--families",
        default=None,
        help="train on anatomical phantom families (comma list of brain, thorax, ellipses; train seeds, "
        "--phantoms per family) instead of random ellipses",
    )
    p.add_argument(
        "--calibration-families",
        default=None,
        help="also fit Mondrian (per voxel class) conformal quantiles on these families' calibration seeds",
    )
    p.add_argument("--calibration-phantoms", type=int, default=8, help="calibration phantoms per family")
    p.add_argument("--seed", type=int, default=0)
    add_data_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    data_config = data_config_from(args)
    config = DenoiserConfig(
        method=args.method,
        network=NetworkConfig(width=args.width),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        ensemble_size=args.ensemble_size,
        prior_scale=args.prior_scale,
        svi_steps=args.svi_steps,
        svi_lr=args.svi_lr,
        ais_proposals=args.ais_proposals,
        ais_samples=args.ais_samples,
        ais_iterations=args.ais_iterations,
        seed=args.seed,
    )
    if not 0 < args.calibration_fraction < 1:
        raise ValueError(f"--calibration-fraction must be in (0, 1), got {args.calibration_fraction}")
    families = _families(args.families)
    cal_families = _families(args.calibration_families)
    if families:
        from petuq_sirf.bayes.anatomical import family_pairs

        train = family_pairs(families, "train", args.phantoms, data_config)
        calib = family_pairs(families, "calibration", max(2, args.calibration_phantoms // 2), data_config)
    else:
        data = load_or_generate(data_config, args.cache, progress=True)
        train, calib = data.split_by_phantom(args.calibration_fraction, seed=args.seed)
    model = make_denoiser(config)
    info = model.fit(train, progress=True)
    scales = conformal_from_dataset(model, calib)
    report = evaluate_on_dataset(model, calib)
    extra = {
        "data_config": {**data_config.__dict__, "dose_fractions": list(data_config.dose_fractions)},
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "calibration_phantoms": sorted(set(calib.phantom.tolist())),
        "training_families": families or ["random ellipses"],
    }
    if cal_families:
        from petuq_sirf.bayes.anatomical import family_pairs, mondrian_for_denoiser

        if args.calibration_phantoms < 1:
            raise ValueError("--calibration-phantoms must be >= 1")
        mcal = family_pairs(cal_families, "calibration", args.calibration_phantoms, data_config)
        extra["mondrian"] = mondrian_for_denoiser(model, mcal).to_dict()
        extra["mondrian_calibration"] = {
            "families": cal_families,
            "phantoms_per_family": args.calibration_phantoms,
            "doses": list(data_config.dose_fractions),
        }
    out = save_denoiser(model, Path(args.out), extra)
    write_metrics(out, {"command": "train-denoiser", "method": args.method, "train": info, "calibration_set": report})
    print(
        f"trained {args.method} in {info['train_time_s']:.1f} s on {len(train)} images; calibration set: "
        f"NRMSE {report['nrmse']:.3f} (input {report['nrmse_input']:.3f}), coverage@90 "
        f"{report['uq']['coverage']['0.90']:.3f}; model in {out}"
    )
    return 0
