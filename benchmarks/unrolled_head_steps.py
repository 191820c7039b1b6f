"""How the unrolled network's variance head and weight posterior settle, on calibration seeds only.

    PYTHONPATH=$PWD python benchmarks/unrolled_head_steps.py --init-weights RUN/fbsem32_mean \\
        --variants 400,1500,3000,6000,400+svi,400+svi-fixed

``--init-weights``: a network trained with ``--head-steps 0 --svi-steps 0`` (the first step of the
``fbsem32`` recipe in docs/heldout_uq.md). Each variant retrains the head (``N`` Adam steps) from that
network, optionally followed by 200 SVI steps (``+svi``: locations learned; ``+svi-fixed``: locations
kept), on the training set of the recipe (``--families``, ``--phantoms`` per family, counts drawn from
``--counts-range``). Printed per variant, family and dose: relative RMS std, RMS error of the posterior
mean and epistemic std over the object of ``--eval-phantoms`` calibration phantoms (seeds from the
600th), and how std and error fall from the lowest to the highest dose.
"""

from __future__ import annotations

import argparse
import copy
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-weights", required=True)
    p.add_argument("--variants", default="400,1500,3000,6000,400+svi,400+svi-fixed")
    p.add_argument("--families", default="thorax,ellipses,texture")
    p.add_argument("--phantoms", type=int, default=128, help="training phantoms per family")
    p.add_argument("--counts-range", default="1e4,1e6")
    p.add_argument("--eval-phantoms", type=int, default=6)
    p.add_argument("--doses", default="0.05,1.0", help="fractions of the standard dose (1e6 true counts)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from petuq_sirf.pipelines.denoiser_training import phantom_families
    from petuq_sirf.recon.family_data import family_low_dose_set
    from petuq_sirf.recon.lowdose import geometric_model
    from petuq_sirf.recon.unrolled import UnrolledTrainingConfig, predict_unrolled, train_unrolled
    from petuq_sirf.recon.weights import load_network
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

    torch.set_num_threads(args.threads)
    families = phantom_families(args.families)
    lo, hi = (float(v) for v in args.counts_range.split(","))
    doses = [float(d) for d in args.doses.split(",")]
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    geometric = geometric_model(layout, image, 4.0)
    net0, _, _ = load_network("unrolled", args.init_weights)
    train = family_low_dose_set(layout, image, families, "train", args.phantoms, 5e4, geometric, counts_range=(lo, hi))
    evals = {
        (f, d): family_low_dose_set(
            layout, image, [f], "calibration", args.eval_phantoms, d * 1e6, geometric, start=600
        )
        for d in doses
        for f in families
    }
    for variant in args.variants.split(","):
        steps, _, svi = variant.partition("+")
        cfg = UnrolledTrainingConfig(
            num_steps=0,
            head_steps=int(steps),
            svi_steps=200 if svi else 0,
            relative_loss=True,
            svi_learn_loc=svi != "svi-fixed",
        )
        t0 = time.perf_counter()
        res = train_unrolled(train, geometric, cfg, net=copy.deepcopy(net0))
        print(f"{variant}: {time.perf_counter() - t0:.0f} s")
        rows = {}
        for (family, dose), data in evals.items():
            pred = predict_unrolled(res.net, data.model(geometric), data.prompts, data.init, res.posterior, 4)
            s2 = e2 = ep2 = 0.0
            for i, reg in enumerate(data.regions):
                obj = reg["object"]
                scale2 = float(data.truth[i][obj].mean()) ** 2
                s2 += float(pred.std[i][obj].pow(2).mean()) / scale2
                ep2 += float(pred.epistemic_std[i][obj].pow(2).mean()) / scale2
                e2 += float((pred.mean[i] - data.truth[i])[obj].pow(2).mean()) / scale2
            n = len(data.regions)
            rows[(family, dose)] = s, e, ep = ((s2 / n) ** 0.5, (e2 / n) ** 0.5, (ep2 / n) ** 0.5)
            print(f"   {family:9s} {dose:5g}: std {s:.3f} error {e:.3f} std/error {s / e:.2f} (epistemic {ep:.3f})")
        for family in families:
            (s_lo, e_lo, _), (s_hi, e_hi, _) = rows[(family, doses[0])], rows[(family, doses[-1])]
            print(f"   {family}: std falls to {s_hi / s_lo:.2f}, error to {e_hi / e_lo:.2f}")


if __name__ == "__main__":
    main()
