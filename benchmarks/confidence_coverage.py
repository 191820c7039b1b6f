"""Coverage and width of the anytime-valid ROI confidence intervals (sequential likelihood mixing).

test-2d geometry, held-out phantoms (the NEMA IEC-like and the brain-like phantom; never used to
train or calibrate the shipped networks, which saw random ellipses), Poisson realisations split into
equal time frames (frame 1 a burn-in). Estimators: OSEM, MAP-RDP, the shipped unrolled network and a
deliberately bad constant image. Two parts:

1. *Set coverage* over ``--realisations``: does the true image lie in ``C_t`` at every frame at once?
   (Implies ROI-interval coverage for every ROI when the solver is exact.)
2. *ROI intervals* with the convex solver on the first ``--solver-realisations``: coverage of the true
   ROI mean, widths per frame (counts), and, for comparison, the 90 % intervals of the posterior
   bootstrap (OSEM on Gamma-weighted counts) and of the unrolled network's Bayesian posterior.

    PYTHONPATH=$PWD python benchmarks/confidence_coverage.py            # ~10 min CPU time on 2 cores
    PYTHONPATH=$PWD python benchmarks/confidence_coverage.py --quick    # smoke run

Writes docs/figures/confidence/confidence_coverage.json and .png; prints tables.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.confidence.estimators import (
    constant_estimator,
    map_rdp_estimator,
    osem_estimator,
    unrolled_estimator,
)
from petuq_sirf.confidence.roi_solver import SolverConfig
from petuq_sirf.confidence.sets import batch_intervals, frame_counts, past_model
from petuq_sirf.recon.em import osem
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import load_network as load_weights
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantoms import make_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, simulate

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "confidence"
ROIS = {"nema": ("hot_sphere_22mm", "background"), "brain": ("hot_lesion", "background")}


def _bootstrap_interval(model, y, mask, replicates, gen, level=0.9):
    vals = []
    for _ in range(replicates):
        w = torch.distributions.Gamma(y.double().clamp_min(1e-12), 1.0).sample() * (y > 0)
        scale = float(w.sum() / y.sum())
        x = osem(past_model(model, scale), w.float(), 4, 8).image
        vals.append(float(x[mask].mean()))
    q = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(q[0]), float(q[1])


def _bayes_interval(net, posterior, model, y, mask, samples, level=0.9):
    x0 = osem(model, y, 10, 1).image
    post = predict_unrolled(net, model, y, x0, posterior, samples, aleatoric=True)
    vals = post.samples[:, mask].mean(-1).numpy()
    q = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(q[0]), float(q[1])


def run_phantom(name, args, net, posterior, layout, image):
    ph = make_phantom(name, image)
    sim = simulate(ph, layout, SimulationConfig(true_counts=args.counts, seed=11))
    model = sim.acquisition_model()
    truth = sim.truth
    expected = model.forward(truth)
    masks = {r: sim.regions[r] for r in ROIS[name]}
    truth_roi = {r: float(truth[m].mean()) for r, m in masks.items()}
    level = float(truth[sim.regions["background"]].mean())
    ests = {
        "osem": osem_estimator(4, 8),
        "map-rdp": map_rdp_estimator(0.01, iterations=args.map_iterations),
        "unrolled": unrolled_estimator(net),
        "bad-constant": constant_estimator(torch.where(model.sensitivity() > 0, 3.0 * level, 0.0)),
    }
    gen = torch.Generator().manual_seed(1000 + len(name))
    reals = [frame_counts(expected, args.frames, 600.0, gen) for _ in range(args.realisations)]
    t0 = time.process_time()
    # part 1: set coverage (thresholds only, no solver), all realisations
    from petuq_sirf.confidence.roi_solver import log_likelihood
    from petuq_sirf.confidence.sets import sequential_thresholds

    inset = np.zeros((args.realisations, len(ests), args.frames - 1), dtype=bool)
    delta = np.zeros_like(inset, dtype=float)
    for p, fr in enumerate(reals):
        thr = sequential_thresholds(model, fr, ests, args.alpha)
        for k in range(args.frames - 1):
            y = fr.counts[1 : k + 2].sum(0)
            share = float(fr.fractions[1 : k + 2].sum())
            lt = float(log_likelihood(model, y, share, truth))
            for j, n in enumerate(ests):
                inset[p, j, k] = lt >= thr["threshold"][n][k]
                delta[p, j, k] = lt - thr["mix"][n][k]
    t_set = time.process_time() - t0
    print(
        f"[{name}] set coverage over {args.realisations} realisations (every frame): "
        + ", ".join(f"{n} {inset[:, j].all(1).mean():.3f}" for j, n in enumerate(ests))
        + "; median log LR truth - mixture at the last frame: "
        + ", ".join(f"{n} {np.median(delta[:, j, -1]):.1f}" for j, n in enumerate(ests))
        + f" ({t_set:.0f} s CPU)",
        flush=True,
    )
    # part 2: ROI intervals by the solver on the first realisations
    t0 = time.process_time()
    sub = reals[: args.solver_realisations]
    cfg = SolverConfig(ml_iterations=args.ml_iterations, inner_iterations=args.inner_iterations)
    out = batch_intervals(model, sub, ests, masks, args.alpha, truth=truth, config=cfg)
    t_roi = time.process_time() - t0
    # comparison intervals (full scan) on the same realisations
    t0 = time.process_time()
    comp = {"bootstrap": [], "bayes-unrolled": []}
    bgen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    for fr in sub:
        y = fr.counts.sum(0)
        comp["bootstrap"].append(
            {r: _bootstrap_interval(model, y, m, args.bootstrap_replicates, bgen) for r, m in masks.items()}
        )
        comp["bayes-unrolled"].append(
            {r: _bayes_interval(net, posterior, model, y, m, args.bayes_samples) for r, m in masks.items()}
        )
    t_comp = time.process_time() - t0
    names = list(ests)
    res = {
        "phantom": name,
        "true_counts_full_scan": args.counts,
        "frames": args.frames,
        "alpha": args.alpha,
        "truth_roi_mean": truth_roi,
        "set_coverage_every_frame": {n: float(inset[:, j].all(1).mean()) for j, n in enumerate(names)},
        "set_coverage_per_frame": {n: inset[:, j].mean(0).tolist() for j, n in enumerate(names)},
        "log_lr_truth_vs_mixture_median": {n: np.median(delta[:, j], 0).tolist() for j, n in enumerate(names)},
        "set_realisations": args.realisations,
        "solver_realisations": len(sub),
        "counts_per_frame_cumulative": out["counts"].mean(0).tolist(),
        "frame_end_s": out["frame_end_s"],
        "roi": {},
        "cpu_s": {"set": t_set, "roi_solver": t_roi, "comparison": t_comp},
        "solver": {
            "kkt_stationarity_max": float(out["kkt_stationarity"].max()),
            "kkt_stationarity_median": float(np.median(out["kkt_stationarity"])),
            "relative_gap_median": float(
                np.median(
                    ((out["lower_primal"] - out["lower"]) + (out["upper"] - out["upper_primal"]))
                    / np.maximum(out["upper"] - out["lower"], 1e-12)
                )
            ),
            "empty_sets": int(out["empty"].sum()),
        },
    }
    for i, r in enumerate(masks):
        t = truth_roi[r]
        d = {}
        for j, n in enumerate(names):
            lo, hi = out["lower"][:, j, i], out["upper"][:, j, i]
            rlo, rhi = out["running_lower"][:, j, i], out["running_upper"][:, j, i]
            d[n] = {
                "coverage_per_frame": ((lo <= t) & (t <= hi)).mean(0).tolist(),
                "running_coverage_all_frames": float(((rlo <= t) & (t <= rhi)).all(1).mean()),
                "median_width_per_frame": np.median(hi - lo, 0).tolist(),
                "median_running_width_per_frame": np.median(rhi - rlo, 0).tolist(),
            }
        for n, ivs in comp.items():
            lo = np.array([iv[r][0] for iv in ivs])
            hi = np.array([iv[r][1] for iv in ivs])
            d[n + " (90%, full scan)"] = {
                "coverage_full_scan": float(((lo <= t) & (t <= hi)).mean()),
                "median_width_full_scan": float(np.median(hi - lo)),
            }
        res["roi"][r] = d
    return res


def _print(res):
    print(
        f"\n== {res['phantom']}: alpha {res['alpha']}, {res['true_counts_full_scan']:.0f} true counts, "
        f"{res['frames']} frames (frame 1 burn-in) =="
    )
    print(f"set coverage (truth in C_t at every frame), {res['set_realisations']} realisations:")
    for n, v in res["set_coverage_every_frame"].items():
        se = math.sqrt(max(v * (1 - v), 1e-12) / res["set_realisations"])
        print(
            f"  {n:14s} {v:.3f} (SE {se:.3f})   median log LR truth - mixture per frame "
            f"{[round(x, 1) for x in res['log_lr_truth_vs_mixture_median'][n]]}"
        )
    print(
        f"ROI intervals ({res['solver_realisations']} realisations), cumulative counts "
        f"{[round(c) for c in res['counts_per_frame_cumulative']]}; truth {res['truth_roi_mean']}"
    )
    for r, d in res["roi"].items():
        print(f"  ROI {r}")
        for n, v in d.items():
            if "coverage_per_frame" in v:
                print(
                    f"    {n:26s} coverage/frame {[round(x, 2) for x in v['coverage_per_frame']]} running-all "
                    f"{v['running_coverage_all_frames']:.2f}  median running width "
                    f"{[round(x, 3) for x in v['median_running_width_per_frame']]}"
                )
            else:
                print(
                    f"    {n:26s} coverage {v['coverage_full_scan']:.2f}  median width {v['median_width_full_scan']:.3f}"
                )
    print(f"  solver: {res['solver']}; cpu s {res['cpu_s']}")


def _figure(results, path):
    from petuq_sirf.viz.common import plt, save_figure

    panels = [(res, r) for res in results for r in res["roi"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (res, r) in zip(axes[0], panels, strict=True):
        counts = res["counts_per_frame_cumulative"]
        for n, v in res["roi"][r].items():
            if "median_running_width_per_frame" in v:
                ax.plot(counts, v["median_running_width_per_frame"], marker="o", label=f"{n} (valid)")
            else:
                ax.axhline(v["median_width_full_scan"], ls="--", lw=1, label=f"{n}: cov {v['coverage_full_scan']:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("counts in the sets (frames 2..t)")
        ax.set_ylabel("median ROI-mean interval width (image units)")
        ax.set_title(f"{res['phantom']} {r}, alpha={res['alpha']}, test-2d", fontsize=8)
        ax.legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", default="nema,brain")
    ap.add_argument("--realisations", type=int, default=100)
    ap.add_argument("--solver-realisations", type=int, default=10)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--counts", type=float, default=5e4)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--map-iterations", type=int, default=10)
    ap.add_argument("--ml-iterations", type=int, default=150)
    ap.add_argument("--inner-iterations", type=int, default=15)
    ap.add_argument("--bootstrap-replicates", type=int, default=20)
    ap.add_argument("--bayes-samples", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.quick:
        args.realisations, args.solver_realisations, args.phantoms = 10, 2, "nema"
        args.bootstrap_replicates, args.bayes_samples = 4, 4
    torch.set_num_threads(2)
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    net, posterior, _ = load_weights("unrolled")
    results = [run_phantom(p, args, net, posterior, layout, image) for p in args.phantoms.split(",")]
    for res in results:
        _print(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "confidence_coverage_quick" if args.quick else "confidence_coverage"
    (out / f"{name}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    _figure(results, out / f"{name}.png")
    print(f"\nwritten {out / name}.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
