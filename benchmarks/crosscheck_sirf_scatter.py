"""Cross-check: scatter estimated from one simulated mMR acquisition, SIRF's SSS ``ScatterEstimator`` vs ours.

A thorax phantom of the held-out test family (``family_phantom("thorax", seed=200000)``, 3D) on the full
Siemens mMR (64 rings, span 11, maximum ring difference 60, views mashed by ``--view-mashing``) is
simulated by ``petuq_sirf.simulation.simulate``: attenuation from its mu-map, crystal efficiencies,
randoms from singles and our smooth scatter model (``simulation.scatter``, ``--scatter-fraction`` of the
prompts net of randoms), Poisson counts. From the *same* prompts, randoms and efficiencies:

* ours: ``pipelines.listmode.tail_fitted_scatter`` (blurred attenuated emission of a short OSEM, scaled
  on the tails);
* SIRF: ``backends.sirf_backend.estimate_scatter`` (STIR's single-scatter simulation with tail fitting,
  ``--sss-iterations`` iterations), given the mu-map, the randoms and the efficiencies as its
  normalisation.

Prints totals, each estimate's NRMSE and correlation against the simulated scatter and against each
other (all bins, and on the tails, where the LOR misses the object), the wall/CPU time of each, and
what each estimate does to the image: OSEM (``--iterations`` x ``--subsets``, embedded backend) with
randoms + that scatter estimate as the background, object NRMSE to the truth and the mean activity in
the lesions and the whole object relative to the truth. The simulated scatter is our own smooth model,
not a Monte-Carlo truth: it is the shape our estimator assumes, so the comparison to it favours ours;
the agreement between the two estimators is the cross-check. Needs SIRF
(``source /work/sirfstir/prefix/env.sh``)::

    PYTHONPATH=$PWD:$PYTHONPATH python benchmarks/crosscheck_sirf_scatter.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from petuq_sirf.backends.bridge import StirImageGrid
from petuq_sirf.backends.registry import backend_available
from petuq_sirf.pipelines.listmode import TAIL_ATTENUATION, tail_fitted_scatter
from petuq_sirf.recon import osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantom_families import family_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, geometric_model, simulate


def nrmse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


def correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(torch.corrcoef(torch.stack([a.double().reshape(-1), b.double().reshape(-1)]))[0, 1])


def to_sirf_image(template, grid: StirImageGrid, x: torch.Tensor):
    img = template.get_uniform_copy(0.0)
    img.fill(grid.to_stir(x.numpy()))
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=float, default=3e7, help="true counts")
    p.add_argument("--scatter-fraction", type=float, default=0.35)
    p.add_argument("--randoms-fraction", type=float, default=0.2)
    p.add_argument("--view-mashing", type=int, default=2)
    p.add_argument("--voxel-mm", type=float, default=4.0, help="in-plane voxel size (planes: half the ring spacing)")
    p.add_argument("--size", type=int, default=127, help="in-plane voxels (odd)")
    p.add_argument("--sss-iterations", type=int, default=3)
    p.add_argument("--iterations", type=int, default=3, help="OSEM iterations of the image comparison")
    p.add_argument("--subsets", type=int, default=21)
    p.add_argument("--seed", type=int, default=200000, help="thorax phantom seed (test split)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    if not backend_available("sirf"):
        print(json.dumps({"sirf": "skipped (does not import here)"}))
        return
    from petuq_sirf.backends.sirf_backend import (  # _fill_acq: the one layout-ordered writer of SIRF data
        _fill_acq,
        acquisition_template,
        estimate_scatter,
        image_template,
        import_sirf,
    )

    pet = import_sirf()
    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="petuq_scatter_"))
    scanner = get_scanner("mMR")
    layout = SinogramLayout(scanner, span=11, max_ring_difference=60, view_mashing=args.view_mashing)
    image = ImageGeometry(
        (2 * scanner.num_rings - 1, args.size, args.size), (scanner.ring_spacing_mm / 2, args.voxel_mm, args.voxel_mm)
    )
    timings = {}

    t = time.perf_counter()
    phantom = family_phantom("thorax", image, seed=args.seed)
    geo = geometric_model(layout, image, psf_fwhm_mm=0.0)
    config = SimulationConfig(
        true_counts=args.counts,
        scatter_fraction=args.scatter_fraction,
        randoms_fraction=args.randoms_fraction,
        psf_fwhm_mm=0.0,
        seed=args.seed,
    )
    sim = simulate(phantom, layout, config, model=geo)
    timings["simulate_s"] = round(time.perf_counter() - t, 1)
    prompts, randoms = sim.prompts, sim.randoms_estimate
    tails = sim.attenuation > TAIL_ATTENUATION

    t, c = time.perf_counter(), time.process_time()
    model = geo.with_terms(multiplicative=sim.efficiency * sim.attenuation, additive=randoms)
    ours, how = tail_fitted_scatter(model, layout, prompts, randoms, sim.attenuation, sim.efficiency)
    timings["ours"] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}

    t, c = time.perf_counter(), time.process_time()
    tmpl = acquisition_template(layout, folder / "acq")
    grid = StirImageGrid(layout, image)
    mu = to_sirf_image(image_template(layout, image, folder / "img"), grid, sim.mu_per_cm)
    eff = _fill_acq(tmpl, sim.efficiency.numpy(), layout)
    norm_asm = pet.AcquisitionSensitivityModel(eff)
    sirf = estimate_scatter(prompts, tmpl, layout, mu, randoms, norm_asm=norm_asm, num_iterations=args.sss_iterations)
    timings["sirf"] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(time.process_time() - c, 1)}

    truth = sim.scatter
    report = {
        "layout": layout.describe(),
        "image": list(image.shape),
        "phantom": phantom.name,
        "prompts_total": float(prompts.sum()),
        "tail_bins_fraction": float(tails.float().mean()),
        "simulated_scatter_total": float(truth.sum()),
        "simulated_scatter_tails_fraction_of_total": float(truth[tails].sum() / truth.sum()),
    }
    net_tails = float((prompts - randoms)[tails].sum())  # trues are ~0 on the tails: what a tail fit matches
    report["tails_prompts_minus_randoms_over_simulated_scatter"] = net_tails / float(truth[tails].sum())
    for name, est in (("ours", ours), ("sirf", sirf)):
        report[name] = {
            "total_ratio_to_simulated": float(est.sum() / truth.sum()),
            "tails_total_ratio_to_prompts_minus_randoms": float(est[tails].sum()) / net_tails,
            "tails_fraction_of_total": float(est[tails].sum() / est.sum()),
            "nrmse_to_simulated": nrmse(est, truth),
            "correlation_to_simulated": correlation(est, truth),
            "tails_nrmse_to_simulated": nrmse(est, truth, tails),
            **timings[name],
        }
    report["ours"]["scaling"] = how
    report["ours_vs_sirf"] = {
        "total_ratio": float(ours.sum() / sirf.sum()),
        "nrmse": nrmse(ours, sirf),
        "correlation": correlation(ours, sirf),
        "tails_correlation": correlation(ours, sirf, tails),
    }

    # what each estimate does to the image
    obj = phantom.regions.get("object", sim.truth > 0)
    lesions = [m for k, m in phantom.regions.items() if k.startswith("lesion_")]
    images = {}
    for name, s in (("simulated scatter", truth), ("ours", ours), ("sirf", sirf), ("no scatter correction", None)):
        background = randoms if s is None else randoms + s
        m = geo.with_terms(multiplicative=sim.efficiency * sim.attenuation, additive=background)
        x = osem(m, prompts, args.iterations, args.subsets).image
        images[name] = {
            "object_nrmse": nrmse(x, sim.truth, obj),
            "object_mean_ratio": float(x[obj].mean() / sim.truth[obj].mean()),
            "lesion_mean_ratios": [round(float(x[les].mean() / sim.truth[les].mean()), 4) for les in lesions],
        }
    report["osem_with_each_scatter"] = images
    report["timings"] = {"simulate_s": timings["simulate_s"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
