"""``petuq simulate``: a scanner-realistic acquisition of a phantom, written as an acquisition folder."""

from __future__ import annotations

import argparse

from petuq_sirf.cli.common import (
    COUNTS,
    FRACTION,
    FWHM_MM,
    SEED,
    add_device_argument,
    check_out_dir,
    float_in,
    int_in,
    resolve_device,
    save_acquisition,
    write_metrics,
)
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantoms import make_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, simulate


def add_geometry_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scanner and image")
    g.add_argument("--scanner", default="test-2d", help="Scanner name (mMR, mCT, D690, test-2d, test-3d).")
    g.add_argument("--rings", type=int_in(1, 1000), default=None, help="Use only this many rings (quick 3D runs).")
    g.add_argument("--span", type=int_in(1, 1000), default=1, help="Axial compression (odd).")
    g.add_argument(
        "--max-ring-difference",
        type=int_in(0, 1000),
        default=None,
        help="Largest ring difference kept in the sinograms (default: all).",
    )
    g.add_argument("--view-mashing", type=int_in(1, 64), default=1, help="Views combined into one (1 = none).")
    g.add_argument(
        "--image-size", type=int_in(1, 2048), default=None, help="Voxels in x and y (default: the tangential bins)."
    )
    g.add_argument(
        "--voxel-size-mm", type=float_in(0.01, 100, lo_open=True), default=None, help="In-plane voxel size in mm."
    )


def geometry_from_args(args: argparse.Namespace) -> tuple[SinogramLayout, ImageGeometry]:
    scanner = get_scanner(args.scanner)
    if args.rings is not None:
        if not 1 <= args.rings <= scanner.num_rings:
            raise ValueError(f"--rings must be in 1..{scanner.num_rings} for {scanner.name}")
        scanner = scanner.with_(num_rings=args.rings)
    layout = SinogramLayout(
        scanner, span=args.span, max_ring_difference=args.max_ring_difference, view_mashing=args.view_mashing
    )
    return layout, ImageGeometry.for_layout(layout, args.image_size, args.voxel_size_mm)


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate prompts, delayeds, randoms, scatter (and list-mode) of a phantom")
    add_geometry_arguments(p)
    p.add_argument(
        "--phantom",
        default="nema",
        help="Phantom: nema, brain, ellipses, sirf-brain, sirf-thorax, or family:<family>:<split>:<index> (an anatomical "
        "family phantom, e.g. family:thorax:calibration:0).",
    )
    p.add_argument("--counts", type=COUNTS, default=1e6, help="Expected true (unscattered) coincidences.")
    p.add_argument("--randoms-fraction", type=FRACTION, default=0.2, help="Expected randoms / prompts.")
    p.add_argument("--scatter-fraction", type=FRACTION, default=0.3, help="Expected scatter / (trues + scatter).")
    p.add_argument("--psf-fwhm-mm", type=FWHM_MM, default=4.0, help="Resolution of the scanner (Gaussian FWHM, mm).")
    p.add_argument(
        "--efficiency-spread", type=float_in(0, 1), default=0.1, help="Log-normal spread of the crystal efficiencies."
    )
    p.add_argument("--no-attenuation", action="store_true", help="Simulate without attenuation.")
    p.add_argument("--listmode", action="store_true", help="Also write list-mode events.")
    p.add_argument(
        "--duration-s",
        type=float_in(0, 1e6, lo_open=True),
        default=600.0,
        help="Acquisition duration in s (list-mode event times).",
    )
    p.add_argument("--seed", type=SEED, default=0, help="Seed of every random draw.")
    p.add_argument("--out", required=True, help="Output acquisition folder.")
    add_device_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    layout, image = geometry_from_args(args)
    config = SimulationConfig(
        true_counts=args.counts,
        randoms_fraction=args.randoms_fraction,
        scatter_fraction=args.scatter_fraction,
        psf_fwhm_mm=args.psf_fwhm_mm,
        efficiency_spread=args.efficiency_spread,
        attenuation=not args.no_attenuation,
        listmode=args.listmode,
        duration_s=args.duration_s,
        seed=args.seed,
    )
    phantom = make_phantom(args.phantom, image, seed=args.seed)
    check_out_dir(args.out, writes_acquisition=True)
    sim = simulate(phantom, layout, config, device=resolve_device(args.device))
    save_acquisition(sim, args.out)
    summary = sim.summary()
    write_metrics(args.out, {"command": "simulate", "phantom": args.phantom, **summary})
    print(f"{layout.describe()}; {summary['prompts']:.0f} prompts written to {args.out}")
    return 0
