"""Shipped unrolled network: raw vs split-conformal coverage on held-out phantoms, and AIS over a weight subset.

    python benchmarks/unrolled_uq_extras.py [--phantoms 8] [--samples 16] [--skip-ais]

Prints (1) the body-voxel coverage of the raw posterior interval (sample quantiles) and of the
conformal interval ``mean -/+ scale z std`` (scales stored in the shipped weights) on held-out
low-dose phantoms with lesion probability 0.5 (seed 5000, never used for training or calibration),
and (2) the ESS, run time and predictive epistemic std of AIS (PMC, default
:class:`~petuq_sirf.recon.unrolled_ais.UnrolledAISConfig`) on the first 8 training phantoms,
next to the shipped SVI posterior.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.unrolled_ais import UnrolledAISConfig, fit_unrolled_ais
from petuq_sirf.recon.weights import conformal_scales_of
from petuq_sirf.recon.weights import load_network as load_weights
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model
from petuq_sirf.uq.calibration import gaussian_quantile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--skip-ais", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    geometric = geometric_model(layout, image)
    net, svi, info = load_weights("unrolled")
    scales = conformal_scales_of(info)
    out: dict = {"conformal_scales": {f"{k:.2f}": v for k, v in scales.items()}}

    test = make_low_dose_set(layout, image, LowDoseConfig(args.phantoms, lesion_probability=0.5, seed=5000), geometric)
    pred = predict_unrolled(net, test.model(geometric), test.prompts, test.init, svi, args.samples, seed=1)
    body = torch.stack([r["background"] for r in test.regions])
    z = (test.truth - pred.mean).abs() / pred.std
    rows = {}
    for level in sorted(scales):
        lo, hi = pred.interval(level)
        raw = float(((test.truth >= lo) & (test.truth <= hi))[body].double().mean())
        conf = float((z <= scales[level] * gaussian_quantile(level))[body].double().mean())
        rows[f"{level:.2f}"] = {"raw": raw, "conformal": conf}
    out["coverage_held_out"] = rows
    print(f"held-out coverage ({args.phantoms} phantoms, {args.samples} samples, body voxels)")
    print("| nominal | raw (sample quantiles) | split-conformal |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['raw']:.3f} | {v['conformal']:.3f} |")

    if not args.skip_ais:
        train = make_low_dose_set(layout, image, LowDoseConfig(8, seed=0), geometric)
        t0 = time.perf_counter()
        res = fit_unrolled_ais(net, train, geometric, UnrolledAISConfig())
        seconds = time.perf_counter() - t0
        ais_pred = predict_unrolled(net, test.model(geometric), test.prompts, test.init, res.posterior, args.samples)
        c = test.init.mean()
        out["ais"] = {
            "names": res.names,
            "ess": res.ess,
            "particles": res.num_particles,
            "ess_per_iteration": res.pmc.ess_per_iteration,
            "seconds": seconds,
            "posterior_std_of_sampled_weights": res.pmc.var.sqrt().tolist(),
            "epistemic_std_body_mean_ais": float(ais_pred.epistemic_std[body].mean() / c),
            "epistemic_std_body_mean_svi": float(pred.epistemic_std[body].mean() / c),
        }
        print(
            f"AIS over {res.names}: ESS {res.ess:.2f} of {res.num_particles} pooled particles, {seconds:.0f} s; "
            f"mean epistemic std in the body / mean initial image: AIS {out['ais']['epistemic_std_body_mean_ais']:.4f}"
            f", SVI {out['ais']['epistemic_std_body_mean_svi']:.4f}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
