"""Evaluation of reconstruction with uncertainty on held-out low-dose 2D phantoms (frequentist protocol).

Phantoms: random ellipses *with* a hot lesion (the shipped networks were trained without lesions,
so lesions are out of distribution), ``--phantoms`` phantoms x ``--realisations`` Poisson noise
realisations at ``--counts`` true counts on test-2d. Methods: OSEM + Gaussian post-filter, MAP-RDP,
PnP-ADMM over denoiser weight draws (Bayesian), the same with Poisson data resampling (Bayesian +
bootstrap), the unrolled network (Bayesian, epistemic + aleatoric), and the posterior bootstrap
(Exp weights, randomised-prior MAP-RDP, ``petuq_sirf.bootstrap``).

Figures of merit per data set, then averaged: NRMSE and PSNR (inside the body), lesion CRC
(true ratio from the truth), ensemble background variability (voxel SD over the realisations /
background mean, background = body minus lesion), lesion ROI bias; UQ metrics from
``petuq_sirf.uq.calibration.evaluate_uq`` over the body: coverage at 0.5-0.95, calibration error,
CRPS. Prints a Markdown table, writes JSON and a figure.

    python benchmarks/eval_recon_uq.py --out docs/figures/recon_uq
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=3)
    p.add_argument("--realisations", type=int, default=4)
    p.add_argument("--counts", type=float, default=5e4)
    p.add_argument("--samples", type=int, default=8, help="posterior samples / bootstrap replicates")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--bayes-denoiser",
        default="svi",
        help="petuq_sirf.bayes method for the 'Bayesian denoiser after OSEM' row (svi, mc_dropout, ...; none = skip)",
    )
    p.add_argument("--out", default="docs/figures/recon_uq")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, run_replicate
    from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
    from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm_posterior
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.recon.weights import load_network as load_weights
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation import SimulationConfig, random_ellipses_phantom, simulate
    from petuq_sirf.simulation.simulate import geometric_model
    from petuq_sirf.uq import contrast_recovery, nrmse, psnr, roi_bias, roi_mean
    from petuq_sirf.uq.calibration import (
        DEFAULT_LEVELS,
        conformal_quantile,
        evaluate_uq,
        gaussian_quantile,
        z_scores,
    )

    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    geometric = geometric_model(layout, image, 4.0)
    den, den_post, _ = load_weights("pnp-admm")
    unr, unr_post, _ = load_weights("unrolled")
    methods = [
        "OSEM+filter",
        "MAP-RDP",
        "PnP-ADMM weight draws (model spread only)",
        "PnP-ADMM weight draws + Poisson bootstrap",
        "Unrolled (Bayesian)",
        "Unrolled (Bayesian, conformal)",
        "Posterior bootstrap",
    ]
    bayes_den = None
    if args.bayes_denoiser != "none":
        from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
        from petuq_sirf.bayes.training_data import DenoisingDataConfig, generate_pairs

        t = time.perf_counter()
        pairs = generate_pairs(DenoisingDataConfig(scanner="test-2d", num_phantoms=32, dose_fractions=(0.05,)))
        bayes_den = make_denoiser(DenoiserConfig(method=args.bayes_denoiser))
        bayes_den.fit(pairs)
        methods.insert(2, f"Bayesian denoiser after OSEM ({args.bayes_denoiser})")
        print(f"trained the {args.bayes_denoiser} denoiser in {time.perf_counter() - t:.0f} s", flush=True)
    # split-conformal scales for the unrolled network's std, from separate calibration phantoms
    cal = make_low_dose_set(layout, image, LowDoseConfig(8, args.counts, lesion_probability=1.0, seed=777), geometric)
    cal_pred = predict_unrolled(unr, cal.model(geometric), cal.prompts, cal.init, unr_post, args.samples)
    scores = torch.cat(
        [
            z_scores(cal.truth[i], cal_pred.mean[i], cal_pred.std[i], r["background"]).abs().reshape(-1)
            for i, r in enumerate(cal.regions)
        ]
    )
    scales = {lv: conformal_quantile(scores, lv) / gaussian_quantile(lv) for lv in DEFAULT_LEVELS}
    per: dict[str, list[dict]] = {m: [] for m in methods}
    means: dict[str, dict[int, list[torch.Tensor]]] = {m: {} for m in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    example: dict = {}
    for ph in range(args.phantoms):
        phantom = random_ellipses_phantom(image, np.random.default_rng(5000 + ph), lesion_probability=1.0)
        for r in range(args.realisations):
            sim = simulate(
                phantom,
                layout,
                SimulationConfig(true_counts=args.counts, seed=100 * ph + r, listmode=True),
                model=geometric,
            )
            model = sim.acquisition_model()
            y, truth = sim.prompts, sim.truth
            les = sim.regions["lesion"]
            bkg = sim.regions["background"] & ~les
            body = sim.regions["background"]
            ratio = roi_mean(truth, les) / roi_mean(truth, bkg)
            out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
            t = time.perf_counter()
            o = osem(model, y, 5, 8).image
            out["OSEM+filter"] = (gaussian_postfilter(o, 6.0, image.voxel_size_mm), None)
            seconds["OSEM+filter"] += time.perf_counter() - t
            if bayes_den is not None:
                t = time.perf_counter()
                o4 = osem(model, y, 4, 8).image  # the denoiser's training input (4 OSEM iterations x 8 subsets)
                draws = bayes_den.predict(o4, num_samples=args.samples, seed=r).draw(per_sample=1, seed=r)
                draws = draws.reshape(-1, *o4.shape).clamp_min(0)
                out[methods[2]] = (draws.mean(0), draws)
                seconds[methods[2]] += time.perf_counter() - t
            t = time.perf_counter()
            prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), o, strength=0.01)
            out["MAP-RDP"] = (map_rdp(model, y, prior, 30, x0=osem(model, y, 2, 8).image).image, None)
            seconds["MAP-RDP"] += time.perf_counter() - t
            cfg = PnPADMMConfig(num_iterations=100)
            for name, boot in (
                ("PnP-ADMM weight draws (model spread only)", False),
                ("PnP-ADMM weight draws + Poisson bootstrap", True),
            ):
                t = time.perf_counter()
                post = pnp_admm_posterior(model, y, den, den_post, args.samples, cfg, bootstrap=boot, seed=r)
                out[name] = (post.summary.mean, post.summary.samples)
                seconds[name] += time.perf_counter() - t
            t = time.perf_counter()
            x0 = osem(model, y, 10, 1).image
            pred = predict_unrolled(unr, model, y, x0, unr_post, args.samples, seed=r)
            out["Unrolled (Bayesian)"] = (pred.mean, pred.samples)
            out["Unrolled (Bayesian, conformal)"] = (pred.mean, pred.std)
            seconds["Unrolled (Bayesian)"] += time.perf_counter() - t
            t = time.perf_counter()
            problem = BootstrapProblem.from_acquisition(sim.to_acquisition())
            bcfg = BootstrapConfig(num_replicates=args.samples, seed=r, num_iterations=15, full_data_iterations=30)
            problem.prepare(bcfg)
            reps = torch.stack([torch.from_numpy(run_replicate(problem, bcfg, b).image) for b in range(args.samples)])
            out["Posterior bootstrap"] = (reps.mean(0), reps)
            seconds["Posterior bootstrap"] += time.perf_counter() - t
            for name, (mean, samples) in out.items():
                row = {
                    "nrmse": nrmse(mean, truth, body),
                    "psnr": psnr(mean, truth, body),
                    "crc": contrast_recovery(mean, les, bkg, ratio),
                    "roi_bias": roi_bias(mean, truth, les),
                }
                if name.endswith("conformal)"):
                    row["uq"] = evaluate_uq(truth, mean=mean, std=samples, mask=body, scale=scales)
                    row["uq"]["crps"] = float("nan")  # not defined for recalibrated intervals
                elif samples is not None:
                    row["uq"] = evaluate_uq(truth, samples=samples, mask=body)
                per[name].append(row)
                means[name].setdefault(ph, []).append(mean)
            if ph == 0 and r == 0:
                example = {"truth": truth, "out": out}
            print(f"phantom {ph} realisation {r} done", flush=True)

    table = {}
    for name in methods:
        rows = per[name]
        entry = {k: float(np.mean([row[k] for row in rows])) for k in ("nrmse", "psnr", "crc", "roi_bias")}
        entry["bv_ensemble"] = None
        if rows and "uq" in rows[0]:
            entry["coverage"] = {
                f"{v:.2f}": float(np.mean([row["uq"]["coverage"][f"{v:.2f}"] for row in rows])) for v in DEFAULT_LEVELS
            }
            entry["calibration_error"] = float(np.mean([row["uq"]["calibration_error"] for row in rows]))
            entry["crps"] = float(np.mean([row["uq"]["crps"] for row in rows]))
        entry["seconds_per_dataset"] = seconds[name] / len(rows)
        table[name] = entry
    # ensemble background variability: voxel SD over realisations / background mean, per phantom
    for ph in range(args.phantoms):
        phantom = random_ellipses_phantom(image, np.random.default_rng(5000 + ph), lesion_probability=1.0)
        bkg = phantom.regions["background"] & ~phantom.regions["lesion"]
        for name in methods:
            stack = torch.stack(means[name][ph])
            val = float(stack.std(0)[..., bkg].mean() / stack.mean(0)[..., bkg].mean())
            table[name].setdefault("_bv", []).append(val)
    for name in methods:
        table[name]["bv_ensemble"] = float(np.mean(table[name].pop("_bv")))

    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    meta = dict(vars(args))
    meta["conformal_scales"] = {f"{k:.2f}": v for k, v in scales.items()}
    (outdir / "eval.json").write_text(json.dumps({"settings": meta, "table": table}, indent=2))
    levels = [f"{v:.2f}" for v in DEFAULT_LEVELS]
    head = "| method | NRMSE | PSNR dB | lesion CRC | BV (ens.) | lesion bias | " + " | ".join(
        f"cov {v}" for v in levels
    )
    print(head + " | cal. err | CRPS | s/dataset |")
    print("|" + "---|" * (len(levels) + 9))
    for name, e in table.items():
        cov = (
            " | ".join(f"{e['coverage'][v]:.2f}" for v in levels)
            if "coverage" in e
            else " | ".join("n/a" for _ in levels)
        )
        cal = f"{e['calibration_error']:.3f} | {e['crps']:.4f}" if "coverage" in e else "n/a | n/a"
        print(
            f"| {name} | {e['nrmse']:.3f} | {e['psnr']:.2f} | {e['crc']:.3f} | {e['bv_ensemble']:.3f} | "
            f"{e['roi_bias']:+.3f} | {cov} | {cal} | {e['seconds_per_dataset']:.2f} |"
        )

    uq_methods = [m for m in methods if "coverage" in table[m] and not m.endswith("conformal)")]
    truth = example["truth"]
    fig, axes = plt.subplots(2, len(uq_methods) + 1, figsize=(3.0 * (len(uq_methods) + 1), 6.0))
    vmax = float(truth.max())
    axes[0, 0].imshow(truth[0], cmap="gray_r", vmin=0, vmax=vmax)
    axes[0, 0].set_title("truth", fontsize=9)
    for m in [m for m in methods if "coverage" in table[m]]:
        axes[1, 0].plot(DEFAULT_LEVELS, [table[m]["coverage"][v] for v in levels], marker="o", label=m)
    axes[1, 0].plot([0.5, 0.95], [0.5, 0.95], "k--", lw=1)
    axes[1, 0].set_xlabel("nominal")
    axes[1, 0].set_ylabel("observed coverage")
    axes[1, 0].legend(fontsize=6)
    axes[1, 0].set_title("calibration", fontsize=9)
    for j, m in enumerate(uq_methods, start=1):
        mean, samples = example["out"][m]
        axes[0, j].imshow(mean[0], cmap="gray_r", vmin=0, vmax=vmax)
        axes[0, j].set_title(f"{m}\nmean", fontsize=8)
        im = axes[1, j].imshow(samples.std(0)[0], cmap="magma")
        axes[1, j].set_title("std", fontsize=8)
        fig.colorbar(im, ax=axes[1, j], fraction=0.046)
    for ax in axes.flat:
        if ax is not axes[1, 0]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(outdir / "recon_uq_eval.png", dpi=100)
    print(f"figure and JSON written to {outdir}")


if __name__ == "__main__":
    main()
