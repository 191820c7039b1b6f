"""``petuq reconstruct``: reconstruct an acquisition folder with OSEM, MLEM or MAP-RDP."""

from __future__ import annotations

import argparse
from pathlib import Path

from petuq_sirf.backends.registry import acquisition_model_for
from petuq_sirf.cli.common import (
    FWHM_MM,
    ITERATIONS,
    SAMPLES,
    add_backend_argument,
    add_device_argument,
    check_out_dir,
    float_in,
    int_in,
    load_acquisition,
    resolve_backend,
    resolve_device,
    write_metrics,
)
from petuq_sirf.io.image_io import write_image
from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
from petuq_sirf.uq.figures_of_merit import image_metrics
from petuq_sirf.viz.images import image_panel
from petuq_sirf.viz.labels import activity_units, reconstruction_title

CLASSICAL_METHODS = ("osem", "mlem", "map-rdp")
UQ_METHODS = ("pnp-admm", "pnp-ula", "unrolled")


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct an acquisition folder (writes image and metrics.json)")
    p.add_argument("input", help="Acquisition folder written by 'petuq simulate' or 'petuq listmode'.")
    p.add_argument("--method", default="osem", choices=CLASSICAL_METHODS + UQ_METHODS, help="Reconstruction method.")
    p.add_argument(
        "--iterations",
        type=ITERATIONS,
        default=None,
        help="Iterations (default: osem 10, mlem 50, map-rdp 30, pnp-admm 100 ADMM iterations, "
        "pnp-ula 1000 burn-in Langevin steps per chain).",
    )
    p.add_argument("--subsets", type=int_in(1, 1000), default=8, help="OSEM subsets (views are interleaved).")
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
        "--weights", default=None, help="Safetensors weights (pnp-admm, pnp-ula, unrolled; default: the shipped ones)."
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


DEFAULT_ITERATIONS = {"osem": 10, "mlem": 50, "map-rdp": 30, "pnp-admm": 100, "pnp-ula": 1000, "unrolled": 1}


def run(args: argparse.Namespace) -> int:
    if args.iterations is None:
        args.iterations = DEFAULT_ITERATIONS[args.method]
    if args.method in UQ_METHODS:
        try:
            from petuq_sirf.cli import reconstruct_uq
        except ImportError as exc:
            raise ValueError(f"method {args.method!r} is not available in this installation") from exc
        return reconstruct_uq.run(args)
    if args.iterations < 0:
        raise ValueError("--iterations must be >= 0")
    backend = resolve_backend(args.backend)
    acq = load_acquisition(args.input)
    check_out_dir(args.out, protect=(args.input,))
    device = resolve_device(args.device)
    model = acquisition_model_for(acq, backend, device)
    y = acq.prompts.to(device)
    if args.method == "mlem":
        rec = osem(model, y, args.iterations, 1, progress=not args.quiet)
    elif args.method == "osem":
        rec = osem(model, y, args.iterations, args.subsets, progress=not args.quiet)
    else:
        init = osem(model, y, 2, args.subsets).image
        if args.beta is not None:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=1.0)
            prior.beta = args.beta
        else:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=args.beta_strength)
        rec = map_rdp(model, y, prior, args.iterations, x0=init, progress=not args.quiet)
    image = rec.image
    if args.postfilter_fwhm_mm > 0:
        image = gaussian_postfilter(image, args.postfilter_fwhm_mm, acq.image.voxel_size_mm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arr = image.cpu().numpy()
    write_image(out / "image.nii.gz", arr, acq.image)
    write_image(out / "image.hv", arr, acq.image, acq.layout.scanner)  # STIR's axial origin
    metrics = {
        "command": "reconstruct",
        "method": args.method,
        "backend": backend,
        "iterations": args.iterations,
        "subsets": args.subsets if args.method == "osem" else 1,
        "objective": rec.objective[-1] if rec.objective else None,
        "projector": model.projector_settings() if hasattr(model, "projector_settings") else None,
    }
    label = reconstruction_title(
        args.method,
        args.iterations,
        args.subsets if args.method != "mlem" else None,
        beta=args.beta if args.method == "map-rdp" else None,
        beta_strength=args.beta_strength if args.method == "map-rdp" else None,
        postfilter_fwhm_mm=args.postfilter_fwhm_mm,
    )
    panels = {label: image.cpu()}
    if acq.truth is not None:
        metrics["metrics"] = image_metrics(image.cpu(), acq.truth, acq.regions, acq.contrast)
        panels = {"truth": acq.truth, **panels}
    image_panel(panels, out / "image.png", shared_scale=tuple(panels), units=activity_units(acq.info))
    write_metrics(out, metrics)
    print(f"{args.method}: image written to {out}")
    return 0
