"""``petuq demo``: the main job, a small end-to-end run on the embedded backend.

Simulates a NEMA IEC-like phantom on a small 2D scanner (attenuation, normalisation,
randoms from delayeds, scatter, Poisson noise), reconstructs it with OSEM and MAP-RDP, then
trains a small Pyro Bayesian denoiser (SVI) on simulated random phantoms and applies it to an OSEM
image of the same acquisition reconstructed like its training data (4 iterations x 8 subsets, shown as
the denoiser's input in ``bayesian_denoiser/denoiser_panel.png``; ``reconstructions.png`` shows the
longer OSEM run): posterior mean, uncertainty maps and coverage of the truth (before and after
conformal recalibration). Writes images, figures and ``metrics.json``; a few minutes at most on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

from petuq_sirf.cli.common import (
    COUNTS,
    SEED,
    add_device_argument,
    check_out_dir,
    resolve_device,
    save_acquisition,
    write_metrics,
)
from petuq_sirf.io.image_io import write_image
from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.uq.figures_of_merit import image_metrics
from petuq_sirf.viz.images import image_panel
from petuq_sirf.viz.labels import reconstruction_title


def register(sub) -> None:
    p = sub.add_parser("demo", help="small end-to-end run: simulate, reconstruct, quantify uncertainty")
    p.add_argument("--out", default="demo_out", help="Output folder.")
    p.add_argument("--counts", type=COUNTS, default=3e5, help="Expected true coincidences of the demo acquisition.")
    p.add_argument("--seed", type=SEED, default=0, help="Seed of the simulation and the denoiser training.")
    p.add_argument("--quick", action="store_true", help="Fewer iterations and samples (for CI smoke tests).")
    p.add_argument("--no-denoiser", action="store_true", help="Skip the Bayesian denoiser stage.")
    add_device_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    out = check_out_dir(args.out)
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    phantom = nema_iec_phantom(image)
    sim = simulate(phantom, layout, SimulationConfig(true_counts=args.counts, seed=args.seed), device=device)
    save_acquisition(sim, out / "acquisition")
    model = sim.acquisition_model(device)
    iters = 3 if args.quick else 10
    rec_osem = osem(model, sim.prompts, iters, 8, progress=not args.quiet).image
    osem_filtered = gaussian_postfilter(rec_osem, 6.0, image.voxel_size_mm)
    prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), rec_osem, strength=0.01)
    rec_map = map_rdp(model, sim.prompts, prior, 10 if args.quick else 40, x0=rec_osem, progress=not args.quiet).image
    images = {
        "truth": sim.truth,
        "osem": rec_osem.cpu(),
        "osem_filtered": osem_filtered.cpu(),
        "map_rdp": rec_map.cpu(),
    }
    for name, img in images.items():
        write_image(out / f"{name}.nii.gz", img.numpy(), image)
    metrics: dict = {"command": "demo", "acquisition": sim.summary(), "reconstruction": {}}
    for name in ("osem", "osem_filtered", "map_rdp"):
        metrics["reconstruction"][name] = image_metrics(images[name], sim.truth, sim.regions, sim.contrast)
    map_iters = 10 if args.quick else 40
    titles = {
        "truth": "truth",
        "osem": reconstruction_title("osem", iters, 8),
        "osem_filtered": reconstruction_title("osem", iters, 8, postfilter_fwhm_mm=6.0),
        "map_rdp": reconstruction_title("map-rdp", map_iters, beta_strength=0.01) + f" (from OSEM {iters} it)",
    }
    shown = {titles[k]: v for k, v in images.items()}
    image_panel(
        shown,
        out / "reconstructions.png",
        shared_scale=tuple(shown),
        title=f"petuq demo: NEMA IEC-like phantom, {args.counts:.3g} expected trues",
    )
    if not args.no_denoiser:
        from petuq_sirf.pipelines.denoiser_demo import run_denoiser_demo

        metrics["bayesian_denoiser"] = run_denoiser_demo(
            sim, out / "bayesian_denoiser", seed=args.seed, quick=args.quick, cache_dir=out / "training_cache"
        )
    metrics["runtime_s"] = time.perf_counter() - t0
    write_metrics(out, metrics)
    print(f"demo finished in {metrics['runtime_s']:.1f} s; outputs in {out}")
    return 0
