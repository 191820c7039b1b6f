"""``petuq train-denoiser``: simulate training pairs, train a Bayesian denoiser, save it safely.

The model folder holds ``model.safetensors`` and ``config.json`` (configuration, training data settings,
training diagnostics, and split-conformal scale factors fitted on held-out phantoms). The training is
:func:`petuq_sirf.pipelines.denoiser_training.train_denoiser_model`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.bayes.denoisers import METHODS, DenoiserConfig
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig
from petuq_sirf.cli.common import (
    COUNTS,
    LEARNING_RATE,
    SEED,
    check_out_dir,
    float_in,
    float_list,
    int_in,
    write_metrics,
)
from petuq_sirf.pipelines.denoiser_training import (
    TRAINING_STATE,
    has_interrupted_run,
    phantom_families,
    train_denoiser_model,
)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training data")
    g.add_argument("--scanner", default="test-2d", help="Scanner of the simulated data.")
    g.add_argument("--phantoms", type=int_in(1, 100_000), default=40, help="Random phantoms.")
    g.add_argument(
        "--doses",
        type=float_list,
        default=(0.02, 0.05, 0.1),
        help="Dose fractions of the standard counts, comma-separated (default 0.02,0.05,0.1).",
    )
    g.add_argument("--standard-counts", type=COUNTS, default=1e6, help="Expected true counts of a full-dose scan.")
    g.add_argument(
        "--osem-iterations", type=int_in(1, 10_000), default=4, help="OSEM iterations of each training input."
    )
    g.add_argument("--osem-subsets", type=int_in(1, 1000), default=8, help="OSEM subsets of each training input.")
    g.add_argument("--data-seed", type=SEED, default=0, help="Seed of the phantoms and the noise.")
    g.add_argument(
        "--cache",
        default=None,
        help="Folder caching the simulated pairs (.npz; default: inside --out until the training has finished).",
    )


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


def register(sub) -> None:
    p = sub.add_parser("train-denoiser", help="train a Bayesian denoiser (SVI, AIS, MC dropout, ensemble)")
    p.add_argument("--out", required=True, help="Model folder to write (an interrupted run resumes there when re-run).")
    p.add_argument("--method", default="svi", choices=METHODS, help="Inference method.")
    p.add_argument("--epochs", type=int_in(0, 100_000), default=30, help="Point-estimate training epochs.")
    p.add_argument("--batch-size", type=int_in(1, 100_000), default=16, help="Images per training step.")
    p.add_argument("--lr", type=LEARNING_RATE, default=2e-3, help="Adam learning rate of the point training.")
    p.add_argument("--width", type=int_in(1, 1024), default=24, help="Channels of the CNN.")
    p.add_argument(
        "--prior-scale", type=float_in(0, 1e3, lo_open=True), default=1.0, help="Std of the Normal weight prior."
    )
    p.add_argument("--svi-steps", type=int_in(0, 1_000_000), default=300, help="SVI steps (method svi).")
    p.add_argument("--svi-lr", type=LEARNING_RATE, default=1e-3, help="SVI learning rate (method svi).")
    p.add_argument("--ais-iterations", type=int_in(1, 10_000), default=8, help="PMC iterations T (method ais).")
    p.add_argument("--ais-proposals", type=int_in(1, 10_000), default=10, help="PMC proposals N (method ais).")
    p.add_argument("--ais-samples", type=int_in(1, 100_000), default=20, help="Samples per proposal K (method ais).")
    p.add_argument(
        "--dropout", type=float_in(0, 1, hi_open=True), default=0.1, help="Dropout rate (method mc_dropout)."
    )
    p.add_argument(
        "--ensemble-size", type=int_in(1, 256), default=4, help="Networks in the ensemble (method ensemble)."
    )
    p.add_argument(
        "--calibration-fraction",
        type=float_in(0, 1, lo_open=True, hi_open=True),
        default=0.2,
        help="Fraction of the phantoms held out for the split-conformal scales.",
    )
    p.add_argument("--seed", type=SEED, default=0, help="Seed of initialisation, minibatches and sampling.")
    p.add_argument(
        "--restart",
        action="store_true",
        help="Discard the checkpoint of an interrupted run in --out and train from the start.",
    )
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.add_argument(
        "--families",
        default=None,
        help="Train on anatomical phantom families (comma list of brain, thorax, ellipses, texture; train seeds, "
        "--phantoms per family) instead of random ellipses.",
    )
    p.add_argument(
        "--calibration-families",
        default=None,
        help="Also fit Mondrian (per voxel class) conformal quantiles on these families' calibration seeds.",
    )
    p.add_argument(
        "--calibration-phantoms", type=int_in(1, 100_000), default=8, help="Calibration phantoms per family."
    )
    add_data_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
    out = check_out_dir(args.out)
    if not args.restart and has_interrupted_run(out):
        print(f"resuming the interrupted training from its last epoch checkpoint in {out / TRAINING_STATE}")
    trained = train_denoiser_model(
        out,
        config,
        data_config,
        calibration_fraction=args.calibration_fraction,
        families=phantom_families(args.families),
        calibration_families=phantom_families(args.calibration_families),
        calibration_phantoms=args.calibration_phantoms,
        cache=args.cache,
        restart=args.restart,
        seed=args.seed,
        progress=not args.quiet,
    )
    info, report = trained.train, trained.report
    metrics = {"command": "train-denoiser", "method": args.method, "train": info, "calibration_set": report}
    write_metrics(trained.folder, metrics)
    print(
        f"trained {args.method} in {info['train_time_s']:.1f} s on {trained.num_training_images} images; calibration "
        f"set: NRMSE {report['nrmse']:.3f} (input {report['nrmse_input']:.3f}), coverage@90 "
        f"{report['uq']['coverage']['0.90']:.3f}; model in {trained.folder}"
    )
    return 0
