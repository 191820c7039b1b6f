"""``petuq train-pnp-denoiser``: train the firmly nonexpansive CNN denoiser for PnP-ADMM and its weight posterior.

The weights folder is what ``petuq reconstruct --method pnp-admm|pnp-ula --weights`` reads; the training is
:func:`petuq_sirf.pipelines.network_training.train_pnp_denoiser_network`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import SEED, check_out_dir, command_line, float_in, int_in


def register(sub) -> None:
    q = sub.add_parser(
        "train-pnp-denoiser",
        help="train the firmly nonexpansive CNN denoiser for PnP-ADMM and its weight posterior",
    )
    q.add_argument("--scanner", default="test-2d", help="Image grid of the training phantoms.")
    q.add_argument(
        "--images",
        type=int_in(1, 100_000),
        default=64,
        help="Training phantoms (random ellipses; with --families: per family).",
    )
    q.add_argument(
        "--families",
        default=None,
        help="Learn from anatomical phantom families instead of random ellipses (comma list of brain, thorax, "
        "ellipses, texture; their train seeds).",
    )
    q.add_argument("--steps", type=int_in(0, 1_000_000), default=400, help="Adam steps of the denoiser training.")
    q.add_argument(
        "--noise-std",
        type=float_in(0, 100, lo_open=True),
        default=0.3,
        help="Largest Gaussian noise level (normalised units).",
    )
    q.add_argument(
        "--penalty", type=float_in(0, 1e6), default=1.0, help="Weight of the Jacobian penalty (0 = unconstrained)."
    )
    q.add_argument(
        "--epsilon", type=float_in(0, 1, hi_open=True), default=0.1, help="Target ||J_(2D-I)||^2 <= 1 - epsilon."
    )
    q.add_argument("--spectral-norm", action="store_true", help="Spectrally normalise every convolution.")
    q.add_argument(
        "--svi-steps",
        type=int_in(0, 1_000_000),
        default=100,
        help="SVI steps for the weight posterior (0 = none).",
    )
    q.add_argument("--seed", type=SEED, default=0, help="Seed of the training images, noise and initialisation.")
    q.add_argument("--out", required=True, help="Output weights folder (model.safetensors + config.json).")
    q.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from petuq_sirf.pipelines.denoiser_training import phantom_families
    from petuq_sirf.pipelines.network_training import PnPDenoiserTrainingSettings, train_pnp_denoiser_network

    settings = PnPDenoiserTrainingSettings(
        scanner=args.scanner,
        images=args.images,
        steps=args.steps,
        noise_std=args.noise_std,
        penalty=args.penalty,
        epsilon=args.epsilon,
        spectral_norm=args.spectral_norm,
        svi_steps=args.svi_steps,
        seed=args.seed,
        families=tuple(phantom_families(args.families)),
    )
    check_out_dir(args.out)
    trained = train_pnp_denoiser_network(
        settings, progress=not args.quiet, command=command_line("train-pnp-denoiser", args)
    )
    path = trained.save(args.out)
    norm = trained.info["jacobian_norm_2D_minus_I_on_test"]
    print(f"denoiser written to {path}; max ||J_(2D-I)|| on 8 noisy test images {norm:.4f}")
    return 0
