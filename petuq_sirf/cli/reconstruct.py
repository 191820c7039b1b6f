"""``petuq reconstruct``: reconstruct an acquisition folder with OSEM, MLEM, MAP-RDP, PnP-ADMM, PnP-ULA or the
unrolled network (method dispatch: :func:`petuq_sirf.pipelines.reconstruction.reconstruct`)."""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import (
    FWHM_MM,
    ITERATIONS,
    SAMPLES,
    add_backend_argument,
    add_device_argument,
    add_discrepancy_arguments,
    check_out_dir,
    float_in,
    int_in,
    load_acquisition,
    resolve_backend,
    resolve_device,
)
from petuq_sirf.pipelines.reconstruction import (
    CLASSICAL_METHODS,
    MODEL_SPREAD_ONLY,
    UQ_METHODS,
    ReconstructionSettings,
    load_method_network,
    reconstruct,
)


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct an acquisition folder (writes image and metrics.json)")
    p.add_argument("input", help="Acquisition folder written by 'petuq simulate' or 'petuq listmode'.")
    p.add_argument("--method", default="osem", choices=CLASSICAL_METHODS + UQ_METHODS, help="Reconstruction method.")
    p.add_argument(
        "--iterations",
        type=ITERATIONS,
        default=None,
        help="Iterations (default: osem 10, mlem 50, map-rdp at most 100 (see --tolerance), pnp-admm 100 ADMM iterations, "
        "pnp-ula 1000 burn-in Langevin steps per chain).",
    )
    p.add_argument("--subsets", type=int_in(1, 1000), default=8, help="OSEM subsets (views are interleaved).")
    p.add_argument(
        "--tolerance",
        type=float_in(0, 1),
        default=1e-4,
        help="Map-rdp: stop before --iterations once an iteration changes the image by less than this fraction "
        "(0: run every iteration); metrics.json records the iterations run and whether it converged.",
    )
    add_discrepancy_arguments(
        p,
        "--",
        None,
        "Unrolled (on by default): refine the network's mean by MLEM until the data are fit as well as Poisson "
        "noise allows (a likelihood-only correction of over-smoothing at high counts; no change where the data "
        "cannot tell); --no-refine-discrepancy gives the network's own mean.",
        "Unrolled with --refine-discrepancy: stop at discrepancy z <= this (0: the calibrated choice).",
    )
    p.add_argument(
        "--beta-strength",
        type=float_in(0, 1e6),
        default=0.01,
        help="MAP-RDP strength relative to the mean sensitivity (count-level independent).",
    )
    p.add_argument(
        "--beta", type=float_in(0, 1e12), default=None, help="Absolute RDP beta (overrides --beta-strength)."
    )
    p.add_argument("--postfilter-fwhm-mm", type=FWHM_MM, default=0.0, help="Gaussian post-filter FWHM in mm.")
    p.add_argument(
        "--samples", type=SAMPLES, default=16, help="Posterior samples (pnp-admm, unrolled; pnp-ula: kept, all chains)."
    )
    p.add_argument("--chains", type=int_in(1, 1024), default=4, help="Pnp-ula: Langevin chains.")
    p.add_argument("--thinning", type=int_in(1, 100_000), default=10, help="Pnp-ula: keep every n-th Langevin state.")
    p.add_argument(
        "--checkpoint-every",
        type=int_in(0, 10_000_000),
        default=500,
        help="Pnp-ula: save the chains' state to --out every n Langevin steps (0: never); the same command "
        "run again after a crash resumes from it, and a finished run removes it.",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="Safetensors weights folder (pnp-admm, pnp-ula, unrolled; default: the shipped ones, for unrolled "
        "'fbsem32w', the 32-channel FBSEM network learned from 512 phantoms per family of thorax + ellipses + "
        "texture); 'fbsem32' and 'fbsem16' select the previous defaults (128 phantoms per family; 16 channels, "
        "thorax + ellipses), 'fbsem32x' fbsem32w with the dose range up to 3e6 trues, 'fbsem32y' that unrolled to 10 iterations, 'dbfb' the shipped unrolled "
        "network with the DBFB regulariser.",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="Apply network weights to data of another voxel size than they were trained on.",
    )
    p.add_argument("--out", required=True, help="Output folder (not the input acquisition folder).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_device_argument(p)
    add_backend_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Parse the options into :class:`ReconstructionSettings`, run :func:`reconstruct`, write its outputs."""
    settings = ReconstructionSettings(
        method=args.method,
        iterations=args.iterations,
        subsets=args.subsets,
        beta_strength=args.beta_strength,
        beta=args.beta,
        postfilter_fwhm_mm=args.postfilter_fwhm_mm,
        samples=args.samples,
        chains=args.chains,
        thinning=args.thinning,
        checkpoint_every=args.checkpoint_every,
        tolerance=args.tolerance,
        refine_discrepancy=args.refine_discrepancy,
        discrepancy_threshold=args.discrepancy_threshold,
        weights=args.weights,
        force=args.force,
        backend=resolve_backend(args.backend) if args.method in CLASSICAL_METHODS else args.backend,
    )
    args.iterations = settings.iterations  # the resolved default goes into run_config.json
    network = load_method_network(settings)  # bad weights are refused before --out is created
    acq = load_acquisition(args.input)
    out = check_out_dir(args.out, protect=(args.input,))
    result = reconstruct(
        acq, settings, resolve_device(args.device), progress=not args.quiet, network=network, state_dir=out
    )
    result.write(out)
    if settings.method in UQ_METHODS:
        note = f" [std = {MODEL_SPREAD_ONLY}]" if settings.method == "pnp-admm" else ""
        count = result.metrics["samples"]
        print(f"{settings.method}: mean/std/interval images ({count} samples) written to {out}{note}")
    else:
        print(f"{settings.method}: image written to {out}")
    return 0
