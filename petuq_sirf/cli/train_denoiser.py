"""``petuq train-denoiser``: simulate training pairs, train a Bayesian denoiser, save it safely.

The model folder holds ``model.safetensors`` and ``config.json`` (configuration, training data settings,
training diagnostics, and split-conformal scale factors fitted on held-out phantoms).
"""

from __future__ import annotations

import argparse
import shutil

from petuq_sirf.bayes.checkpoint import save_denoiser
from petuq_sirf.bayes.denoisers import METHODS, DenoiserConfig, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset, evaluate_on_dataset
from petuq_sirf.bayes.networks import NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig, geometry_for, load_or_generate
from petuq_sirf.cli.common import COUNTS, LEARNING_RATE, SEED, check_out_dir, float_in, int_in, write_metrics


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
    g.add_argument("--scanner", default="test-2d", help="Scanner of the simulated data.")
    g.add_argument("--phantoms", type=int_in(1, 100_000), default=40, help="Random phantoms.")
    g.add_argument(
        "--doses",
        type=_floats,
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


def _families(text: str | None) -> list[str]:
    from petuq_sirf.simulation.phantom_families import FAMILIES

    names = [v.strip() for v in (text or "").split(",") if v.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown phantom families {bad}; choose from {', '.join(FAMILIES)}")
    return names


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
        help="Train on anatomical phantom families (comma list of brain, thorax, ellipses; train seeds, "
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


TRAINING_STATE = "training_state"


def run(args: argparse.Namespace) -> int:
    data_config = data_config_from(args)
    _, image = geometry_for(data_config.scanner)
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
    state = out / TRAINING_STATE
    if args.restart and state.exists():
        shutil.rmtree(state)
    elif (state / "net.pt").is_file() or (state / "member0.pt").is_file():
        print(f"resuming the interrupted training from its last epoch checkpoint in {state}")
    families = _families(args.families)
    cal_families = _families(args.calibration_families)
    if families:
        from petuq_sirf.bayes.anatomical import family_pairs

        train = family_pairs(families, "train", args.phantoms, data_config)
        calib = family_pairs(families, "calibration", max(2, args.calibration_phantoms // 2), data_config)
    else:
        data = load_or_generate(data_config, args.cache or state / "data", progress=not args.quiet)
        train, calib = data.split_by_phantom(args.calibration_fraction, seed=args.seed)
    model = make_denoiser(config)
    info = model.fit(train, progress=not args.quiet, checkpoint_dir=state)
    scales = conformal_from_dataset(model, calib)
    report = evaluate_on_dataset(model, calib)
    extra = {
        "data_config": {**data_config.__dict__, "dose_fractions": list(data_config.dose_fractions)},
        "conformal_scales": {f"{k:.2f}": v for k, v in scales.items()},
        "calibration_phantoms": sorted(set(calib.phantom.tolist())),
        "image_grid": {"shape": list(image.shape), "voxel_size_mm": list(image.voxel_size_mm)},
        "training_families": families or ["random ellipses"],
    }
    if cal_families:
        from petuq_sirf.bayes.anatomical import family_pairs, mondrian_for_denoiser

        mcal = family_pairs(cal_families, "calibration", args.calibration_phantoms, data_config)
        extra["mondrian"] = mondrian_for_denoiser(model, mcal).to_dict()
        extra["mondrian_calibration"] = {
            "families": cal_families,
            "phantoms_per_family": args.calibration_phantoms,
            "doses": list(data_config.dose_fractions),
        }
    out = save_denoiser(model, out, extra)
    shutil.rmtree(state, ignore_errors=True)  # the model is saved: the epoch checkpoints are no longer needed
    write_metrics(out, {"command": "train-denoiser", "method": args.method, "train": info, "calibration_set": report})
    print(
        f"trained {args.method} in {info['train_time_s']:.1f} s on {len(train)} images; calibration set: "
        f"NRMSE {report['nrmse']:.3f} (input {report['nrmse_input']:.3f}), coverage@90 "
        f"{report['uq']['coverage']['0.90']:.3f}; model in {out}"
    )
    return 0
