"""``petuq demo``: the main job, a small end-to-end run on the embedded backend.

Simulates a NEMA IEC-like phantom on a small 2D scanner (attenuation, normalisation,
randoms from delayeds, scatter, Poisson noise), reconstructs it with OSEM and MAP-RDP, then
trains a small Pyro Bayesian denoiser (SVI) on simulated random phantoms and applies it to an OSEM
image of the same acquisition reconstructed like its training data (4 iterations x 8 subsets, shown as
the denoiser's input in ``bayesian_denoiser/denoiser_panel.png``; ``reconstructions.png`` shows the
longer OSEM run): posterior mean, uncertainty maps and coverage of the truth (before and after
conformal recalibration). Writes images, figures and ``metrics.json``; a few minutes at most on
2 CPU cores. The run is :func:`petuq_sirf.pipelines.demo.run_demo`.
"""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import COUNTS, SEED, add_device_argument, check_out_dir, resolve_device, write_metrics
from petuq_sirf.pipelines.demo import run_demo


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
    device = resolve_device(args.device)
    out = check_out_dir(args.out)
    metrics = run_demo(
        out,
        args.counts,
        args.seed,
        quick=args.quick,
        denoiser=not args.no_denoiser,
        device=device,
        progress=not args.quiet,
    )
    write_metrics(out, metrics)
    print(f"demo finished in {metrics['runtime_s']:.1f} s; outputs in {out}")
    return 0
