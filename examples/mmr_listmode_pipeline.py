"""End-to-end mMR-style run: list-mode -> randoms -> scatter -> OSEM -> bootstrap uncertainty maps.

Without ``--listmode`` it first simulates an acquisition of a NEMA IEC-like phantom on a
reduced Siemens mMR (few rings, mashed views) and writes it as a 32-bit PETLINK list-mode
file (span 1, like the scanner's), so every later step reads real-format data:

1. bin the list-mode file (prompts and delayeds) into the reconstruction layout;
2. randoms from the delayeds (ML singles, then the singles product);
3. attenuation factors from the mu-map; normalisation from ``norm.hs`` when present;
4. scatter: a smooth scatter shape from an initial reconstruction, scaled by tail fitting
   on the LORs that miss the object (with ``--backend sirf`` and a real scan: SIRF's SSS);
5. OSEM with ``m = norm x attenuation`` and ``b = randoms + scatter`` on ``--backend``;
6. uncertainty: the posterior bootstrap of the list-mode events (``petuq_sirf.bootstrap``:
   random event weights, randomised prior, MAP-RDP per replicate) gives voxel-wise mean,
   standard deviation and coefficient-of-variation maps.

Outputs (in ``--out``): ``scan.l.hdr``/``.l`` (simulated mode), ``osem.nii.gz``,
``bootstrap_mean.nii.gz``, ``bootstrap_std.nii.gz``, ``bootstrap_cv.nii.gz``,
``uncertainty.png`` and ``metrics.json``.

Run:  python examples/mmr_listmode_pipeline.py --out out/mmr [--quick] [--backend embedded|sirf|stir]
      python examples/mmr_listmode_pipeline.py --listmode scan.l.hdr --mu-map mu.hv --out out/real
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from petuq_sirf.backends.registry import BACKENDS, make_acquisition_model, require_backend
from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, run_bootstrap, summarise_store
from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.io.interfile import read_projdata, write_projdata
from petuq_sirf.io.mmr_listmode import bin_mmr_listmode, make_layout, read_mmr_header, read_mmr_listmode
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.pipelines.listmode import tail_fitted_scatter
from petuq_sirf.recon import RelativeDifferencePrior, osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.simulation.attenuation import attenuation_factors
from petuq_sirf.simulation.randoms import estimate_randoms


def simulated_scan(args, out: Path) -> tuple[Path, Path, SinogramLayout, ImageGeometry, dict]:
    """Simulate a reduced-mMR acquisition and write it as PETLINK list-mode + mu-map + norm."""
    if args.quick:
        scanner = get_scanner("test-3d").with_(name="mMR-like (quick)", num_rings=4)
        layout = SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=2)
        image = ImageGeometry((7, 49, 49), (2.0, 5.0, 5.0))  # odd sizes: usable by SIRF/STIR too
    else:
        scanner = get_scanner("mMR").with_(num_rings=args.rings)
        layout = make_layout(scanner, span=3, max_ring_difference=min(4, args.rings - 1), view_mashing=args.mash)
        image = ImageGeometry((2 * args.rings - 1, 97, 97), (scanner.ring_spacing_mm / 2, 5.0, 5.0))
    phantom = nema_iec_phantom(image)
    cfg = SimulationConfig(true_counts=args.counts, psf_fwhm_mm=0.0, listmode=True, duration_s=60.0, seed=args.seed)
    sim = simulate(phantom, layout, cfg)
    hdr = out / "scan.l.hdr"
    from petuq_sirf.io.mmr_listmode import write_mmr_listmode

    write_mmr_listmode(hdr, sim.listmode, layout, file_span=1)
    mu = write_image(out / "mu_map.nii.gz", sim.mu_per_cm.numpy(), image)
    write_projdata(out / "norm.hs", sim.efficiency.cpu().numpy(), layout)
    truth = {"truth": sim.truth, "regions": sim.regions, "scatter_total": float(sim.scatter.sum())}
    return hdr, mu, layout, image, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--backend", default="embedded", choices=BACKENDS)
    parser.add_argument("--listmode", help="a Siemens mMR .l.hdr file (default: simulate one)")
    parser.add_argument("--mu-map", help="mu-map in 1/cm (.hv or .nii) on the reconstruction grid")
    parser.add_argument("--quick", action="store_true", help="tiny geometry, a few seconds (CI)")
    parser.add_argument("--rings", type=int, default=4, help="rings of the reduced mMR (simulated mode)")
    parser.add_argument("--mash", type=int, default=4, help="view mashing (simulated mode)")
    parser.add_argument("--counts", type=float, default=2e5, help="expected trues (simulated mode)")
    parser.add_argument(
        "--scatter-fraction", type=float, default=0.3, help="used when no scatter tails exist (object fills the FOV)"
    )
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--subsets", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=8, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    require_backend(args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    truth = None
    if args.listmode:
        hdr, mu_path = Path(args.listmode), Path(args.mu_map) if args.mu_map else None
        header = read_mmr_header(hdr)
        layout = make_layout(header.scanner, 11, 60, view_mashing=args.mash)
        image = ImageGeometry.for_layout(layout, num_xy=127, voxel_xy_mm=4.0)
        if mu_path is not None:
            _, image = read_image(mu_path, layout.scanner)
    else:
        hdr, mu_path, layout, image, truth = simulated_scan(args, out)
        header = read_mmr_header(hdr, scanner=layout.scanner)
    timings["acquire_s"] = time.perf_counter() - t

    # 1. bin the list-mode file
    t = time.perf_counter()
    prompts, delayeds = bin_mmr_listmode(header, layout, progress=False)
    events = read_mmr_listmode(header, layout)
    timings["bin_listmode_s"] = time.perf_counter() - t

    # 2. randoms, 3. normalisation and attenuation
    t = time.perf_counter()
    randoms = estimate_randoms(layout, delayeds) if delayeds.sum() > 0 else torch.zeros(layout.shape)
    norm_path = hdr.parent / "norm.hs"
    eff = torch.ones(layout.shape)  # normalisation: our Interfile norm.hs beside the list-mode file, if any
    if norm_path.is_file():
        eff = torch.from_numpy(read_projdata(norm_path).array.reshape(layout.shape))
    if mu_path is not None:
        mu, _ = read_image(mu_path, layout.scanner)
        att = attenuation_factors(RayTracingProjector(layout, image), torch.as_tensor(mu, dtype=torch.float32))
    else:
        att = torch.ones(layout.shape)
    timings["randoms_attenuation_s"] = time.perf_counter() - t

    # 4. scatter (tail fitted), on the embedded projector
    t = time.perf_counter()
    base = make_acquisition_model("embedded", layout, image, eff * att, randoms)
    scatter, scatter_method = tail_fitted_scatter(base, layout, prompts, randoms, att, eff, 2, args.scatter_fraction)
    timings["scatter_s"] = time.perf_counter() - t

    # 5. OSEM on the chosen backend
    t = time.perf_counter()
    model = make_acquisition_model(args.backend, layout, image, eff * att, randoms + scatter)
    rec = osem(model, prompts, args.iterations, args.subsets).image
    timings["osem_s"] = time.perf_counter() - t
    write_image(out / "osem.nii.gz", rec.cpu().numpy(), image)

    # 6. posterior bootstrap of the list-mode events (petuq_sirf.bootstrap): Exp(1) event weights,
    #    randomised RDP penalty, warm-started MAP-RDP per replicate, resumable store in out/bootstrap
    t = time.perf_counter()
    problem = BootstrapProblem(
        layout, image, eff * att, randoms + scatter, events, RelativeDifferencePrior(), backend=args.backend
    )
    config = BootstrapConfig(num_replicates=args.replicates, seed=args.seed, num_iterations=10, full_data_iterations=20)
    store = run_bootstrap(problem, config, out / "bootstrap", progress=False)
    summary = summarise_store(store, levels=(0.9,))
    mean, std = torch.from_numpy(summary.mean).float(), torch.from_numpy(summary.std).float()
    cv = torch.where(mean > 0.05 * mean.max(), std / mean.clamp_min(1e-12), torch.zeros_like(mean))
    timings["bootstrap_s"] = time.perf_counter() - t
    for name, arr in (("bootstrap_mean", mean), ("bootstrap_std", std), ("bootstrap_cv", cv)):
        write_image(out / f"{name}.nii.gz", arr.numpy(), image)

    metrics = {
        "backend": args.backend,
        "layout": layout.describe(),
        "image_shape": list(image.shape),
        "listmode_events": len(events),
        "prompts": float(prompts.sum()),
        "delayeds": float(delayeds.sum()),
        "randoms_estimate": float(randoms.sum()),
        "scatter_estimate": float(scatter.sum()),
        "scatter_method": scatter_method,
        "replicates": args.replicates,
        "mean_cv_in_object": float(cv[cv > 0].mean()) if (cv > 0).any() else None,
        "timings_s": timings,
    }
    if truth is not None:
        from petuq_sirf.uq import nrmse

        metrics["scatter_true"] = truth["scatter_total"]
        metrics["osem_nrmse"] = nrmse(rec.cpu(), truth["truth"])
        body = truth["regions"].get("background")
        if body is not None:
            metrics["bootstrap_cv_background"] = float(cv[body].mean())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _panel(out / "uncertainty.png", rec.cpu(), mean, std, cv)
    print(json.dumps(metrics, indent=2))


def _panel(path: Path, rec, mean, std, cv) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = rec.shape[0] // 2
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for ax, (title, img) in zip(axes, (("OSEM", rec), ("bootstrap mean", mean), ("bootstrap std", std), ("CV", cv))):
        im = ax.imshow(img[z].numpy(), cmap="magma" if title != "CV" else "viridis")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
