"""Bayesian denoisers compared at one low-dose level: accuracy, calibration, CRPS, run time.

Run:  python benchmarks/bench_denoisers.py [--quick] [--out DIR] [--cache DIR]

Data: random-ellipses phantoms on test-2d (64 x 64, 3.8 mm), simulated at 2, 5 and 10 % of 1e6 true
counts and reconstructed with OSEM (4 iterations x 8 subsets). Phantoms are split into training (60 %),
calibration (15 %, for split-conformal recalibration) and test (25 %). All methods train on all doses;
the table is for the test images at 5 % dose (voxels in the body masks, pooled).

Second table: the frequentist protocol on the NEMA IEC-like phantom (never seen in training): M = 20
independent noise realisations at 5 % dose, coverage of the truth at 90 % over the body and the hot
spheres, before and after the conformal scales of the calibration set.

Columns: PSNR (dB, mean over images) and NRMSE of the posterior mean; coverage at 90 % before / after
conformal recalibration; calibration error (mean |observed - nominal| over 0.5 ... 0.95) before / after;
CRPS (closed form for the Gaussian predictive, in image units: the truth is about 1-3 in the body at 5 % dose); rank
correlation of std and |error|; training time; prediction time per image (32 posterior samples).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from petuq_sirf.bayes import DenoiserConfig, DenoisingDataConfig, NetworkConfig, load_or_generate, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset, evaluate_on_dataset, frequentist_protocol
from petuq_sirf.bayes.training_data import geometry_for
from petuq_sirf.simulation.phantoms import nema_iec_phantom
from petuq_sirf.viz.uq_figures import calibration_curves, method_panels

METHODS = ("svi", "ais", "mc_dropout", "ensemble")
DOSE = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and short training (smoke test)")
    parser.add_argument("--out", default="benchmarks/results/denoisers", help="JSON and figures")
    parser.add_argument("--cache", default=None, help="cache folder for the simulated pairs")
    parser.add_argument("--realisations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data_config = DenoisingDataConfig(num_phantoms=12 if args.quick else 40, dose_fractions=(0.02, 0.05, 0.1), seed=0)
    t0 = time.perf_counter()
    data = load_or_generate(data_config, args.cache, progress=True)
    print(f"data: {len(data)} images in {time.perf_counter() - t0:.1f} s")
    train, rest = data.split_by_phantom(0.4, seed=0)
    calib, test = rest.split_by_phantom(0.625, seed=0)
    test_low = test.select_dose(DOSE)
    calib_low = calib.select_dose(DOSE)
    print(f"train {len(train)} images, calibration {len(calib_low)}, test {len(test_low)} (dose {DOSE})")

    net = NetworkConfig(width=24)
    common = {"network": net, "epochs": 6 if args.quick else 30, "batch_size": 8, "lr": 3e-3, "seed": 0}
    configs = {
        "svi": DenoiserConfig(method="svi", svi_steps=20 if args.quick else 150, svi_lr=2e-3, **common),
        "ais": DenoiserConfig(method="ais", ais_iterations=4 if args.quick else 8, **common),
        "mc_dropout": DenoiserConfig(method="mc_dropout", dropout=0.1, **common),
        "ensemble": DenoiserConfig(method="ensemble", ensemble_size=2 if args.quick else 4, **common),
    }
    _, image = geometry_for(data_config.scanner)
    nema = nema_iec_phantom(image)
    results, freq, curves, panels = {}, {}, {}, {}
    for name, config in configs.items():
        model = make_denoiser(config)
        info = model.fit(train, progress=True)
        scales = conformal_from_dataset(model, calib_low, 32, seed=1)
        res = evaluate_on_dataset(model, test_low, scales, 32, seed=2)
        res["train_time_s"] = info["train_time_s"]
        res["info"] = {k: v for k, v in info.items() if not isinstance(v, list) or k == "ess_per_iteration"}
        results[name] = res
        curves[name] = res["uq"]["coverage"]
        curves[f"{name} (conformal)"] = res["uq_conformal"]["coverage"]
        fr, maps = frequentist_protocol(model, nema, data_config, DOSE, args.realisations, 32, scales, seed=7)
        freq[name] = fr
        maps.pop("z")
        panels[name] = maps
        print(
            f"{name}: NRMSE {res['nrmse']:.3f}, cov90 {res['uq']['coverage']['0.90']:.3f} -> "
            f"{res['uq_conformal']['coverage']['0.90']:.3f}, train {info['train_time_s']:.0f} s"
        )

    first = next(iter(results.values()))
    lines = [
        f"Test set: {first['num_images']} held-out images at {DOSE:.0%} dose; input NRMSE "
        f"{first['nrmse_input']:.3f}, input PSNR {first['psnr_input_db']:.2f} dB",
        "",
        "| method | PSNR dB | NRMSE | cov@90 | cov@90 conformal | cal. err | cal. err conformal | CRPS | rank corr | "
        "train s | predict s/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['psnr_db']:.2f} | {r['nrmse']:.3f} | {r['uq']['coverage']['0.90']:.3f} | "
            f"{r['uq_conformal']['coverage']['0.90']:.3f} | {r['uq']['calibration_error']:.3f} | "
            f"{r['uq_conformal']['calibration_error']:.3f} | {r['uq']['crps']:.4f} | {r['rank_correlation']:.2f} | "
            f"{r['train_time_s']:.0f} | {r['predict_time_per_image_s']:.3f} |"
        )
    lines += [
        "",
        f"Frequentist protocol, NEMA IEC-like phantom (unseen), M = {args.realisations} realisations at {DOSE:.0%} dose:",
        "",
        "| method | NRMSE (input) | cov@90 body | cov@90 body conformal | cal. err conformal | cov@90 hot spheres conformal | "
        "mean std / empirical SD |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in freq.items():
        hot = [v for k, v in f["conformal"].get("regions", {}).items() if k.startswith("hot")]
        hot_cov = sum(r["coverage"]["0.90"] for r in hot) / len(hot) if hot else float("nan")
        lines.append(
            f"| {name} | {f['nrmse']:.3f} ({f['nrmse_input']:.3f}) | {f['coverage']['0.90']:.3f} | "
            f"{f['conformal']['coverage']['0.90']:.3f} | {f['conformal']['calibration_error']:.3f} | {hot_cov:.3f} | "
            f"{f['mean_predicted_std'] / max(f['empirical_sd'], 1e-12):.2f} |"
        )
    ais = results.get("ais", {}).get("info", {})
    if ais:
        lines += [
            "",
            f"AIS: ESS {ais['ess']:.1f} of {ais['num_weighted_samples']} pooled weighted samples; per iteration "
            + ", ".join(f"{v:.1f}" for v in ais["ess_per_iteration"])
            + f" (of {configs['ais'].ais_proposals * configs['ais'].ais_samples}).",
        ]
    table = "\n".join(lines)
    print()
    print(table)
    figures = {
        "calibration": str(
            calibration_curves(curves, out / "calibration_curves.png", title=f"test set, {DOSE:.0%} dose")
        ),
        "panels": str(method_panels(panels, out / "uq_panels.png", title=f"NEMA IEC-like, {DOSE:.0%} dose")),
    }
    (out / "results.json").write_text(
        json.dumps(
            {"test_set": results, "frequentist": freq, "table": table, "figures": figures}, indent=1, default=str
        )
    )
    print(f"\nfigures: {figures['calibration']}, {figures['panels']}")


if __name__ == "__main__":
    main()
