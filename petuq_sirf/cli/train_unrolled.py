"""``petuq train-unrolled``: train the unrolled FBSEM network with Bayesian CNN blocks on simulated low-dose data.

The weights folder (``model.safetensors`` + ``config.json``: point weights ``net.*``, posterior ``posterior.*``,
settings and checksums in the record; see :mod:`petuq_sirf.recon.weights`) is what ``petuq reconstruct
--method unrolled --weights`` reads. The training is :func:`petuq_sirf.pipelines.network_training.train_unrolled_network`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import (
    COUNTS,
    SEED,
    add_calibration_arguments,
    add_device_argument,
    calibration_settings_from,
    check_out_dir,
    command_line,
    float_in,
    float_list,
    int_in,
    resolve_device,
)


def register(sub) -> None:
    p = sub.add_parser(
        "train-unrolled",
        help="train the unrolled FBSEM network with Bayesian CNN blocks on simulated low-dose data",
    )
    p.add_argument("--scanner", default="test-2d", help="Scanner of the simulated training data.")
    p.add_argument(
        "--phantoms",
        type=int_in(1, 100_000),
        default=32,
        help="Training phantoms: per family with --families (one noise realisation and dose each), else random "
        "ellipses.",
    )
    p.add_argument(
        "--validation-phantoms",
        type=int_in(1, 100_000),
        default=8,
        help="Validation phantoms (seeds from seed + 1000).",
    )
    p.add_argument("--counts", type=COUNTS, default=5e4, help="Expected true counts per acquisition.")
    p.add_argument(
        "--families",
        default="",
        help="Comma-separated anatomical phantom families (brain, thorax, ellipses, texture) to train on, from their "
        "training seeds; default: random ellipses.",
    )
    p.add_argument(
        "--counts-range",
        type=float_list,
        default=None,
        help="LOW,HIGH expected true counts: each training phantom's counts drawn log-uniformly in the range "
        "(needs --families); --counts is then the count level of the stored calibration.",
    )
    p.add_argument(
        "--dose-input",
        action="store_true",
        help="Give the network the count level (a noise-level map) as an input (for --counts-range training).",
    )
    p.add_argument(
        "--regulariser",
        choices=("cnn", "dbfb"),
        default="cnn",
        help="Regulariser of each unrolled step: cnn (residual CNN, FBSEM) or dbfb (unfolded dual "
        "block-coordinate forward-backward prox of a learned sparsity prior).",
    )
    p.add_argument("--unrolled-iterations", type=int_in(1, 100), default=6, help="Unrolled iterations K.")
    p.add_argument(
        "--channels", type=int_in(1, 512), default=16, help="Channels of the regulariser CNN in each iteration."
    )
    p.add_argument("--steps", type=int_in(0, 1_000_000), default=300, help="Adam steps on the mean image (MSE).")
    p.add_argument(
        "--head-steps", type=int_in(0, 1_000_000), default=100, help="Adam steps on the aleatoric head (NLL)."
    )
    p.add_argument("--svi-steps", type=int_in(0, 1_000_000), default=100, help="SVI steps for the weight posterior.")
    p.add_argument(
        "--svi-fixed-loc",
        action="store_true",
        help="Keep the weight posterior's locations at the trained weights and learn only its scales (the "
        "posterior-mean network stays the trained one).",
    )
    p.add_argument(
        "--init-weights",
        default=None,
        metavar="DIR",
        help="Start from this weights folder's point network (its architecture replaces --channels, "
        "--dose-input, --regulariser; its posterior is dropped). A larger --unrolled-iterations unrolls it "
        "further, the added iterations starting with its last one's strength. With --steps 0: "
        "retrain only the variance head and the posterior.",
    )
    p.add_argument(
        "--posterior",
        choices=("svi", "ais"),
        default="svi",
        help="Weight posterior: svi (mean-field over the regulariser CNN) or ais (PMC adaptive importance "
        "sampling of log_beta and the regulariser's output bias, around the trained weights).",
    )
    p.add_argument("--ais-iterations", type=int_in(1, 10_000), default=6, help="PMC iterations (--posterior ais).")
    p.add_argument(
        "--ais-draws",
        type=int_in(2, 100_000),
        default=16,
        help="Weight draws kept after resampling (--posterior ais).",
    )
    p.add_argument(
        "--ais-sigma",
        type=float_in(0, 10, lo_open=True),
        default=2e-4,
        help="Initial PMC proposal std (--posterior ais).",
    )
    add_calibration_arguments(p)
    p.add_argument("--batch-size", type=int_in(1, 4096), default=4, help="Acquisitions per training step.")
    p.add_argument("--seed", type=SEED, default=0, help="Seed of the training data, initialisation and batches.")
    p.add_argument("--out", required=True, help="Output weights folder (model.safetensors + config.json).")
    add_device_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from petuq_sirf.pipelines.denoiser_training import phantom_families
    from petuq_sirf.pipelines.network_training import UnrolledTrainingSettings, train_unrolled_network

    if args.counts_range is not None and len(args.counts_range) != 2:
        raise ValueError(f"--counts-range must be LOW,HIGH (two numbers), got {args.counts_range}")
    settings = UnrolledTrainingSettings(
        families=tuple(phantom_families(args.families)),
        counts_range=args.counts_range,
        dose_input=args.dose_input,
        regulariser=args.regulariser,
        init_weights=args.init_weights,
        svi_learn_loc=not args.svi_fixed_loc,
        scanner=args.scanner,
        phantoms=args.phantoms,
        validation_phantoms=args.validation_phantoms,
        counts=args.counts,
        unrolled_iterations=args.unrolled_iterations,
        channels=args.channels,
        steps=args.steps,
        head_steps=args.head_steps,
        svi_steps=args.svi_steps,
        posterior=args.posterior,
        ais_iterations=args.ais_iterations,
        ais_draws=args.ais_draws,
        ais_sigma=args.ais_sigma,
        batch_size=args.batch_size,
        seed=args.seed,
        calibration=calibration_settings_from(args),
    )
    check_out_dir(args.out)
    trained = train_unrolled_network(
        settings,
        resolve_device(args.device),
        progress=not args.quiet,
        command=command_line("train-unrolled", args),
    )
    info = trained.info
    if "ais" in info:
        ais = info["ais"]
        print(f"AIS over {ais['names']}: ESS {ais['ess']:.2f} of {ais['particles']} pooled particles")
    path = trained.save(args.out)
    losses = info["validation_mse"]
    print(f"unrolled network written to {path}; validation MSE {losses[0]:.4g} -> {losses[-1]:.4g}")
    if "conformal_scales" in info:
        print("conformal std scales: " + ", ".join(f"{k}: {v:.3f}" for k, v in info["conformal_scales"].items()))
    return 0
