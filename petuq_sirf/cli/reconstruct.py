"""``petuq reconstruct``: reconstruct an acquisition folder with OSEM, MLEM or MAP-RDP."""

from __future__ import annotations

import argparse
from pathlib import Path

from petuq_sirf.cli.common import (
    add_backend_argument,
    add_device_argument,
    load_acquisition,
    resolve_backend,
    resolve_device,
    write_metrics,
)
from petuq_sirf.data.image_io import write_image
from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
from petuq_sirf.uq.figures_of_merit import image_metrics
from petuq_sirf.viz.images import image_panel

CLASSICAL_METHODS = ("osem", "mlem", "map-rdp")
UQ_METHODS = ("pnp-admm", "pnp-ula", "unrolled")


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct an acquisition folder (writes image and metrics.json)")
    p.add_argument("input", help="acquisition folder written by 'petuq simulate'")
    p.add_argument("--method", default="osem", choices=CLASSICAL_METHODS + UQ_METHODS)
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations (default: osem 10, mlem 50, map-rdp 30, pnp-admm 100 ADMM iterations, "
        "pnp-ula 1000 burn-in Langevin steps per chain)",
    )
    p.add_argument("--subsets", type=int, default=8, help="OSEM subsets (views are interleaved)")
    p.add_argument(
        "--beta-strength",
        type=float,
        default=0.01,
        help="MAP-RDP strength relative to the mean sensitivity (count-level independent)",
    )
    p.add_argument("--beta", type=float, default=None, help="absolute RDP beta (overrides --beta-strength)")
    p.add_argument("--postfilter-fwhm-mm", type=float, default=0.0, help="Gaussian post-filter FWHM in mm")
    p.add_argument(
        "--samples", type=int, default=16, help="posterior samples (pnp-admm, unrolled; pnp-ula: kept, all chains)"
    )
    p.add_argument("--chains", type=int, default=4, help="pnp-ula: Langevin chains")
    p.add_argument("--thinning", type=int, default=10, help="pnp-ula: keep every n-th Langevin state")
    p.add_argument(
        "--weights", default=None, help="safetensors weights (pnp-admm, pnp-ula, unrolled; default: shipped)"
    )
    p.add_argument("--out", required=True, help="output folder")
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
    device = resolve_device(args.device)
    model = acq.acquisition_model(device, backend)
    y = acq.prompts.to(device)
    if args.method == "mlem":
        rec = osem(model, y, args.iterations, 1, progress=True)
    elif args.method == "osem":
        rec = osem(model, y, args.iterations, args.subsets, progress=True)
    else:
        init = osem(model, y, 2, args.subsets).image
        if args.beta is not None:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=1.0)
            prior.beta = args.beta
        else:
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), init, strength=args.beta_strength)
        rec = map_rdp(model, y, prior, args.iterations, x0=init, progress=True)
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
    }
    panels = {args.method: image.cpu()}
    if acq.truth is not None:
        metrics["metrics"] = image_metrics(image.cpu(), acq.truth, acq.regions, acq.contrast)
        panels = {"truth": acq.truth, **panels}
    image_panel(panels, out / "image.png", shared_scale=tuple(panels))
    write_metrics(out, metrics)
    print(f"{args.method}: image written to {out}")
    return 0
