"""Choose between unrolled networks on calibration seeds only (never test seeds, never the held-out family).

    PYTHONPATH=$PWD python benchmarks/select_unrolled.py --candidate "current=shipped" --candidate "new=DIR"

(``shipped`` = the default unrolled network, ``fbsem32w``; a shipped name such as ``fbsem32`` or ``fbsem16``,
previous defaults, or a weights folder also work.)

For each candidate and dose: the mean object NRMSE of the posterior-mean image over ``--phantoms``
calibration-split phantoms per learning-side family (``OUT_OF_FAMILY["in_family"]``), seeds from the
``--start``-th calibration seed on (600 by default: not the seeds the conformal calibrations or the
reference tuning use), one noise realisation each. Prints a table and the mean over doses and families;
the rule the caller states before looking at any test phantom decides which network ships. A second
table gives the raw predicted std against the error: RMS std / RMS error over the object (pooled over the
phantoms) per family and dose, and per family the factor by which each falls from the lowest to the
highest dose (a std that tracks the error falls as much as the error does).

``--interval-score``: also the interval score of each candidate's calibrated 90 % Mondrian interval, the rule that
weighs width against misses (:func:`petuq_sirf.uq.calibration.interval_score`). Per dose, the Mondrian conformal
(normalised score) is fitted as ``benchmarks/heldout_uq.py`` fits it, on ``--calibration-phantoms`` calibration
seeds from index 0 of ``--calibration-families``; it is scored on ``--phantoms`` other calibration seeds (from
``--start``) per family with ``--realisations`` Poisson realisations each, over each phantom's object, relative to
the mean truth there. ``--refined-too`` adds each candidate with its mean refined by discrepancy-stopped MLEM
(:mod:`petuq_sirf.recon.discrepancy`) as a further candidate.
"""

from __future__ import annotations

import argparse
import json

import torch

STANDARD_COUNTS = 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=WEIGHTS")
    p.add_argument("--doses", default="0.05,0.1,1.0")
    p.add_argument("--phantoms", type=int, default=8, help="calibration phantoms per family")
    p.add_argument("--start", type=int, default=600, help="first calibration seed index")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the table here")
    p.add_argument(
        "--families",
        default="",
        help="comma-separated families (default: the learning side, OUT_OF_FAMILY['in_family']); never the held-out one",
    )
    p.add_argument("--interval-score", action="store_true", help="also the 90 %% Mondrian interval score (see above)")
    p.add_argument("--calibration-phantoms", type=int, default=12, help="Mondrian calibration phantoms per family")
    p.add_argument(
        "--calibration-families", default="thorax,ellipses,texture", help="families of the Mondrian calibration"
    )
    p.add_argument("--realisations", type=int, default=1, help="noise realisations per scored phantom")
    p.add_argument("--refined-too", action="store_true", help="also each candidate with the discrepancy refinement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from petuq_sirf.recon.family_data import family_low_dose_set
    from petuq_sirf.recon.lowdose import geometric_model
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.recon.weights import load_network
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation.phantom_families import OUT_OF_FAMILY

    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    geometric = geometric_model(layout, image, 4.0)
    families = [f for f in args.families.split(",") if f] or list(OUT_OF_FAMILY["in_family"])
    if set(families) & set(OUT_OF_FAMILY["held_out"]):
        p.error(f"--families: {', '.join(OUT_OF_FAMILY['held_out'])} is held out; selection never sees it")
    nets = {}
    for spec in args.candidate:
        name, _, path = spec.partition("=")
        net, post, _ = load_network("unrolled", None if path in ("", "shipped") else path)
        nets[name] = (net, post)
    table: dict = {}
    spread: dict = {}  # name -> (family, dose) -> (relative RMS std, relative RMS error)
    for dose in (float(d) for d in args.doses.split(",")):
        for family in families:
            data = family_low_dose_set(
                layout,
                image,
                [family],
                "calibration",
                args.phantoms,
                dose * STANDARD_COUNTS,
                geometric,
                start=args.start,
            )
            for name, (net, post) in nets.items():
                pred = predict_unrolled(net, data.model(geometric), data.prompts, data.init, post, args.samples)
                vals, s2, e2 = [], 0.0, 0.0
                for i, reg in enumerate(data.regions):
                    obj = reg["object"]
                    t = data.truth[i][obj]
                    vals.append(float(torch.linalg.norm(pred.mean[i][obj] - t) / torch.linalg.norm(t)))
                    scale = float(t.mean())
                    s2 += float(pred.std[i][obj].pow(2).mean()) / scale**2
                    e2 += float((pred.mean[i][obj] - t).pow(2).mean()) / scale**2
                table.setdefault(name, {})[f"{family} {dose:g}"] = sum(vals) / len(vals)
                spread.setdefault(name, {})[(family, dose)] = (s2 / len(vals)) ** 0.5, (e2 / len(vals)) ** 0.5
    cols = list(next(iter(table.values())))
    print("| network | " + " | ".join(cols) + " | mean |")
    print("|---" * (len(cols) + 2) + "|")
    for name, row in table.items():
        mean = sum(row.values()) / len(row)
        row["mean"] = mean
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {mean:.3f} |")
    print()
    print("| network | " + " | ".join(f"std/RMSE {c}" for c in cols) + " | std falls / error falls (per family) |")
    print("|---" * (len(cols) + 2) + "|")
    doses = sorted({d for _, d in next(iter(spread.values()))})
    for name, cells in spread.items():
        ratios = list(cells.values())  # filled in the order of the columns
        falls = []
        for family in dict.fromkeys(f for f, _ in cells):
            (s_lo, e_lo), (s_hi, e_hi) = cells[(family, doses[0])], cells[(family, doses[-1])]
            falls.append(f"{family} {s_hi / s_lo:.2f} / {e_hi / e_lo:.2f}")
            table[name][f"{family} std falls"] = s_hi / s_lo
            table[name][f"{family} error falls"] = e_hi / e_lo
        for c, (s_, e_) in zip(cols, ratios):
            table[name][f"std/RMSE {c}"] = s_ / e_
        print(f"| {name} | " + " | ".join(f"{s_ / e_:.2f}" for s_, e_ in ratios) + " | " + "; ".join(falls) + " |")
    if args.interval_score:
        held_out = set(OUT_OF_FAMILY["held_out"])
        cal_families = [f for f in args.calibration_families.split(",") if f]
        if held_out & set(cal_families):
            p.error(f"--calibration-families: {', '.join(sorted(held_out))} is held out; selection never sees it")
        scores = interval_scores(args, nets, families, cal_families, layout, image, geometric)
        cols = list(next(iter(scores.values())))
        print()
        print("| network (90 % Mondrian interval score / mean truth) | " + " | ".join(cols) + " | mean |")
        print("|---" * (len(cols) + 2) + "|")
        for name, row in scores.items():
            mean = sum(row.values()) / len(row)
            print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + f" | {mean:.4f} |")
            table.setdefault(name, {}).update({f"interval score {c}": v for c, v in row.items()})
            table[name]["interval score mean"] = mean
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


def interval_scores(args, nets: dict, families: list, cal_families: list, layout, image, geometric) -> dict:
    """``{candidate: {"family dose": relative mean interval score}}`` of the 90 % Mondrian interval (module doc)."""
    from petuq_sirf.recon.discrepancy import refine_posterior_mean
    from petuq_sirf.recon.family_data import family_low_dose_set
    from petuq_sirf.recon.reference_tuning import osem_realisations
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.uq.calibration import DEFAULT_LEVELS, interval_score
    from petuq_sirf.uq.mondrian import MondrianConformal, voxel_classes

    vox = image.voxel_size_mm
    candidates = {name: (net, post, False) for name, (net, post) in nets.items()}
    if args.refined_too:
        candidates.update({f"{name} + discrepancy EM": (net, post, True) for name, (net, post) in nets.items()})

    def predict(net, post, refine, model, y, x0, seed):
        pred = predict_unrolled(net, model, y, x0, post, args.samples, seed=seed)
        if refine:
            pred = refine_posterior_mean(model, y, pred, check_model_fit=True)[0]
        return pred.mean, pred.std

    out: dict = {}
    for dose in (float(d) for d in args.doses.split(",")):
        counts = dose * STANDARD_COUNTS
        cal = family_low_dose_set(
            layout, image, cal_families, "calibration", args.calibration_phantoms, counts, geometric
        )
        fitted = {}
        for name, (net, post, refine) in candidates.items():
            mean, std = predict(net, post, refine, cal.model(geometric), cal.prompts, cal.init, 1)
            classes = voxel_classes(mean, vox)
            body = classes < MondrianConformal().spec.num_classes
            fitted[name] = MondrianConformal(score="normalised", levels=DEFAULT_LEVELS).fit(
                cal.truth, classes, mean=mean, std=std, mask=body
            )
        for family in families:
            data = family_low_dose_set(
                layout, image, [family], "calibration", args.phantoms, counts, geometric, start=args.start
            )
            sums = dict.fromkeys(candidates, 0.0)
            for i in range(len(data)):
                model = geometric.with_terms(data.multiplicative[i], data.additive[i])
                truth, obj = data.truth[i], data.regions[i]["object"]
                expected = model.forward(truth)
                gen = torch.Generator().manual_seed(1000 + i)
                ys = torch.poisson(expected.expand(args.realisations, *expected.shape).contiguous(), generator=gen)
                x0 = osem_realisations(model, ys, 10, 1)
                for name, (net, post, refine) in candidates.items():
                    mean, std = predict(net, post, refine, model, ys, x0, i)
                    lo, hi = fitted[name].interval(voxel_classes(mean, vox), 0.9, mean=mean, std=std)
                    sums[name] += interval_score(truth, lo, hi, 0.9, obj) / float(truth[obj].mean())
            for name in candidates:
                out.setdefault(name, {})[f"{family} {dose:g}"] = sums[name] / len(data)
    return out


if __name__ == "__main__":
    main()
