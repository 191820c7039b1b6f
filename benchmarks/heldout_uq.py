"""Held-out UQ benchmark (issue 10, item 9): anatomy the methods never saw, frequentist protocol.

    PYTHONPATH=$PWD python benchmarks/heldout_uq.py --quick      # a few minutes of CPU
    PYTHONPATH=$PWD python benchmarks/heldout_uq.py              # the full protocol

Scanner test-2d (64 x 64 x 3.8 mm). Standard (100 %) dose = 1e6 expected true counts; 5 % = 5e4 (the
issue's low-dose setting), 10 % = 1e5. Physics as ``petuq simulate`` (attenuation from the phantom's
mu-map, normalisation, 30 % scatter, 20 % randoms); reconstruction models use the true expected additive
term (randoms + scatter), so only Poisson noise differs between realisations.

Splits (``petuq_sirf.simulation.phantom_families``): the Bayesian denoiser is trained on *train* seeds
of the in-family families (thorax, ellipses); every calibration (conformal, Mondrian, ROI) uses
*calibration* seeds of those families at the same dose; test phantoms use *test* seeds: thorax
(in-family) and brain (out-of-family: never seen in training or calibration). Unrolled networks come
from ``--unrolled NAME=WEIGHTS`` (``shipped`` = the default packaged test-2d network, ``fbsem32w``; a shipped name
``fbsem32w``, ``fbsem32x``, ``fbsem32y``, ``fbsem32`` and ``fbsem16`` (previous defaults) or ``dbfb``, or a weights folder; repeat the option to compare
networks, e.g. the FBSEM and the DBFB architectures trained with ``petuq train-unrolled --families
thorax,ellipses --counts-range 1e4,1e6 --dose-input``); their training seeds never overlap the
calibration or test seeds. The Bayesian denoiser is dose-conditioned (``--denoiser-dose-input``, default on).
References: OSEM with the NRMSE-optimal iterations and post-filter, and MAP-RDP with the NRMSE-optimal
strength and iteration count (20-400, from 2026-12-07 evening; 20 before), both searched per family and dose on that family's *calibration* seeds (never the test truth),
cached in ``<out>/reference_tuning.json`` with a fingerprint of the calibration data and system model: a cache
made by another simulator or projector (or copied from another run) is tuned again, not reused.

For each test phantom and dose: ``--realisations`` noise realisations; per method and region (object,
lesions, edges, background): voxel coverage at 0.5-0.95, calibration error (mean |observed - nominal|),
90 % interval width, predicted std / actual RMSE; lesion ROI-mean coverage at 90 %; NRMSE (object, mean
over realisations). Writes ``<out>/results.json`` and ``<out>/heldout_uq.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.cli.common import float_list

STANDARD_COUNTS = 1e6
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
REGIONS = ("object", "lesions", "edges", "background")
POOLED_MIN_VOXELS = 600  # voxel-realisations a class needs (pooled over test phantoms) for its std / RMSE
ROI_SIZE_EDGES_MM = (15.0,)  # lesion-size groups of the size-grouped ROI conformal (equivalent diameter)
ROI_MIN_GROUP = 15  # calibration lesions a size group needs for its own factor (else the pooled one)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer phantoms / samples (a few CPU minutes)")
    p.add_argument("--out", default="docs/figures/heldout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--doses", default="0.05,0.1,1.0", help="fractions of the standard dose (1e6 true counts)")
    p.add_argument("--realisations", type=int, default=20)
    p.add_argument("--test-phantoms", type=int, default=None, help="test phantoms per family")
    p.add_argument(
        "--test-start",
        type=int,
        default=0,
        help="index of the first test seed of each family (a sample independent of an earlier run's)",
    )
    p.add_argument(
        "--test-families", default="thorax,brain", help="test families: thorax (in family) and/or brain (held out)"
    )
    p.add_argument("--calibration-phantoms", type=int, default=None, help="calibration phantoms per family")
    p.add_argument(
        "--calibration-families",
        default="",
        help="families of the conformal / Mondrian / ROI calibration (default: the in-family ones, thorax and "
        "ellipses); never the held-out brain",
    )
    p.add_argument("--samples", type=int, default=None, help="posterior samples per reconstruction")
    p.add_argument("--markdown", default=None, help="only print markdown tables of an existing results.json")
    p.add_argument(
        "--unrolled",
        action="append",
        default=None,
        metavar="NAME=WEIGHTS",
        help="an unrolled network to evaluate (WEIGHTS a weights folder, 'shipped' = the default fbsem32w, or a shipped "
        "name: fbsem32w, fbsem32x, fbsem32y, fbsem32, fbsem16, dbfb); repeatable",
    )
    p.add_argument("--scanner", default="test-2d", help="test-2d (2D) or test-3d (a small 3D case)")
    p.add_argument("--rings", type=int, default=None, help="rings of the scanner (test-3d: 4 gives 7 image planes)")
    p.add_argument("--standard-counts", type=float, default=None, help="expected trues at 100 %% dose (default 1e6)")
    p.add_argument(
        "--contrast-edges",
        type=float_list,
        default=(),
        metavar="LO,HI",
        help="add a local-contrast axis to the voxel classes (e.g. 0.85,1.2: cold spot / flat / hot spot; "
        "VoxelClassSpec.contrast_edges); default none: the 18 plain classes",
    )
    p.add_argument(
        "--contrast-fwhm-mm", type=float, default=30.0, help="neighbourhood width of the local contrast (mm)"
    )
    p.add_argument(
        "--disagreement-edges",
        type=float_list,
        default=(),
        metavar="LO,HI",
        help="add an axis for disagreement with plain OSEM (4 it x 8 subsets) of the same data to the voxel classes "
        "(write --disagreement-edges=-0.25,0.25: OSEM lower / agrees / higher, relative to the body median; "
        "VoxelClassSpec.disagreement_edges); default none",
    )
    p.add_argument(
        "--disagreement-fwhm-mm", type=float, default=8.0, help="smoothing of the disagreement with OSEM (mm)"
    )
    p.add_argument(
        "--refine-discrepancy",
        action="store_true",
        help="also evaluate each unrolled network with its mean refined by discrepancy-stopped MLEM "
        "(petuq_sirf.recon.discrepancy; rows 'NAME + discrepancy EM', calibrated like every other method)",
    )
    p.add_argument(
        "--discrepancy-threshold",
        type=float,
        default=0.0,
        help="stop the refinement at discrepancy z <= this (0: chosen on in-family calibration phantoms)",
    )
    p.add_argument(
        "--no-denoiser-dose-input", dest="denoiser_dose_input", action="store_false", help="denoiser without dose input"
    )
    return p.parse_args()


def main() -> None:  # noqa: C901 - one linear protocol
    args = parse()
    if args.markdown:
        res = json.loads(Path(args.markdown).read_text())
        markdown_tables(res)
        lesion_table(res)
        return
    torch.set_num_threads(args.threads)
    quick = args.quick
    n_test = args.test_phantoms or (1 if quick else 3)
    n_cal = args.calibration_phantoms or (8 if quick else 12)
    n_samples = args.samples or (4 if quick else 8)
    n_train = 8 if quick else 16
    epochs = 15 if quick else 30
    n_map = 2 if quick else 4
    doses = tuple(float(d) for d in args.doses.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu0 = time.process_time()

    from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
    from petuq_sirf.bayes.training_data import DenoisingDataset
    from petuq_sirf.recon.discrepancy import model_error_z, refine_posterior_mean
    from petuq_sirf.recon.family_data import family_low_dose_set
    from petuq_sirf.recon.lowdose import geometric_model
    from petuq_sirf.recon.reference_tuning import (
        TuningCase,
        fingerprint_matches,
        load_tuning,
        lookup,
        map_rdp_reference,
        osem_realisations,
        osem_reference,
        save_tuning,
        tune_map_rdp,
        tune_osem_postfilter,
        tuning_fingerprint,
        tuning_key,
    )
    from petuq_sirf.recon.unrolled import predict_unrolled
    from petuq_sirf.recon.weights import calibration_for_counts, conformal_scales_of
    from petuq_sirf.recon.weights import load_network as load_weights
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation.phantom_families import OUT_OF_FAMILY, family_phantom, seeds
    from petuq_sirf.simulation.simulate import SimulationConfig, simulate
    from petuq_sirf.uq.calibration import calibration_error, gaussian_quantile
    from petuq_sirf.uq.mondrian import MondrianConformal, VoxelClassSpec, global_conformal, voxel_classes
    from petuq_sirf.uq.roi import (
        RoiConformal,
        equivalent_diameter_mm,
        roi_coverage,
        roi_interval_samples,
        roi_mean,
        roi_mean_samples,
        size_group,
    )
    from petuq_sirf.uq.std_scaling import MondrianStdScaling

    try:  # voxel classes of every Mondrian calibration (optionally with the local-contrast axis)
        class_spec = VoxelClassSpec(
            contrast_edges=args.contrast_edges,
            contrast_fwhm_mm=args.contrast_fwhm_mm,
            disagreement_edges=args.disagreement_edges,
            disagreement_fwhm_mm=args.disagreement_fwhm_mm,
        )
    except ValueError as e:
        raise SystemExit(f"heldout_uq: voxel-class options: {e}") from None

    scanner = get_scanner(args.scanner)
    if args.rings:
        scanner = scanner.with_(name=f"{args.scanner}-{args.rings}rings", num_rings=args.rings)
    layout = SinogramLayout(scanner)
    standard_counts = args.standard_counts or STANDARD_COUNTS
    image = ImageGeometry.for_layout(layout)
    vox = image.voxel_size_mm
    geometric = geometric_model(layout, image, 4.0)
    in_family = OUT_OF_FAMILY["in_family"]
    from petuq_sirf.pipelines.denoiser_training import phantom_families

    try:
        cal_families = tuple(phantom_families(args.calibration_families)) or in_family
    except ValueError as exc:
        raise SystemExit(f"heldout_uq: error: --calibration-families: {exc}") from None
    if set(cal_families) & set(OUT_OF_FAMILY["held_out"]):
        raise SystemExit(
            f"heldout_uq: error: --calibration-families must not include the held-out {OUT_OF_FAMILY['held_out']}"
        )
    test_families = tuple(f for f in args.test_families.split(",") if f)  # thorax in-family, brain out-of-family
    unknown = set(test_families) - {"thorax", "brain"}
    if unknown or not test_families:
        raise SystemExit(f"heldout_uq: error: --test-families: choose from thorax, brain (got {args.test_families!r})")

    def case(family: str, seed: int, dose: float):
        ph = family_phantom(family, image, seed)
        sim = simulate(ph, layout, SimulationConfig(true_counts=dose * standard_counts, seed=seed), model=geometric)
        model = geometric.with_terms(sim.multiplicative, sim.additive_true)
        return ph, sim, model

    def draws(sim, num: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        lam = sim.expected_prompts.double().expand(num, *sim.expected_prompts.shape).contiguous()
        return torch.poisson(lam, generator=g).float()

    def log(msg: str) -> None:
        print(f"[{time.process_time() - cpu0:7.1f} s CPU] {msg}", flush=True)

    # ---------------------------------------------------------------- 1. tuned references (calibration seeds)
    tuning_path = out / "reference_tuning.json"
    tuning = load_tuning(tuning_path) if tuning_path.is_file() else {}
    n_tune = 1 if quick else 3
    strengths = (0.005, 0.01, 0.02) if quick else (0.002, 0.005, 0.01, 0.02, 0.05)
    for family in test_families:
        for dose in doses:
            key = tuning_key(family, dose)
            cases = []
            for s in seeds("calibration", n_tune, start=500):  # other calibration seeds than the conformal ones
                ph, sim, model = case(family, s, dose)
                cases.append(TuningCase(model, draws(sim, 3, s), sim.truth, ph.regions["object"]))
            fingerprint = tuning_fingerprint(cases)
            cached = tuning.get(key, {})
            extended = "extensions" in cached.get("osem", {}) and "grid_iterations" in cached.get("map_rdp", {})
            if (
                cached.get("num_phantoms", 0) == n_tune
                and fingerprint_matches(cached.get("fingerprint"), fingerprint)
                and extended
            ):
                continue
            if cached:  # other calibration data, simulator or projector, or grids not yet extended: tune again
                why = "does not match this code's calibration data" if extended else "predates the extended grids"
                log(f"cached tuning of {key} {why}; tuning again")
            entry = {
                "osem": tune_osem_postfilter(cases, iteration_grid=(2, 3, 4, 6, 8)),
                "map_rdp": tune_map_rdp(cases, strength_grid=strengths, max_realisations=1),  # iterations tuned too
                "num_phantoms": n_tune,
                "seeds": [int(c) for c in seeds("calibration", n_tune, start=500)],
                "fingerprint": fingerprint,
            }
            tuning[key] = entry
            save_tuning(tuning_path, {key: entry})
            edge = [k for k in ("osem", "map_rdp") if entry[k]["at_grid_edge"]]
            log(
                f"tuned {key}: OSEM {entry['osem']['iterations']} it, {entry['osem']['fwhm_mm']} mm; "
                f"RDP strength {entry['map_rdp']['strength']:g}, {entry['map_rdp']['iterations']} it"
                + (f" (still at the edge of the extended grid: {', '.join(edge)})" if edge else "")
            )

    # ---------------------------------------------------------------- 2. Bayesian denoiser on anatomical train seeds
    from petuq_sirf.bayes import NetworkConfig

    den_cfg = DenoiserConfig(
        method="mc_dropout", epochs=epochs, seed=0, network=NetworkConfig(dose_input=args.denoiser_dose_input)
    )
    noisy, target, mask, dose_l, index = [], [], [], [], []
    for fi, family in enumerate(in_family):
        for s in seeds("train", n_train):
            for dose in doses:
                ph, sim, model = case(family, s, dose)
                rec = osem_realisations(model, sim.prompts[None], 4, 8)[0]
                for k in range(rec.shape[0]):  # every image plane (one in 2D) is a training slice
                    noisy.append(rec[k])
                    target.append(sim.truth[k])
                    mask.append(ph.regions["object"][k])
                    dose_l.append(dose)
                    index.append(fi * 100000 + s)
    train = DenoisingDataset(
        torch.stack(noisy).float(),
        torch.stack(target).float(),
        torch.stack(mask),
        torch.tensor(dose_l),
        torch.tensor(index),
        vox,
    )
    denoiser = make_denoiser(den_cfg)
    denoiser.fit(train)
    log(f"trained mc_dropout denoiser on {len(train)} anatomical training images")

    unrolled = {}
    for spec in args.unrolled or ["unrolled=shipped"]:
        name, _, path = spec.partition("=")
        net, post, info = load_weights("unrolled", None if path in ("", "shipped") else path)
        unrolled[name] = (net, post, info, None)
        if args.refine_discrepancy:
            unrolled[f"{name} + discrepancy EM"] = (net, post, info, args.discrepancy_threshold)
        trained_on = info.get("families", ["random ellipses"])
        log(f"unrolled {name}: {info['net_config']} trained on {trained_on}, counts {info.get('counts_range')}")

    # ---------------------------------------------------------------- 3. per-dose calibration on anatomical phantoms
    refinement_log: dict[str, dict] = {}

    def run_unrolled(name, model, y, x0, seed, guard=None):
        net, post, _, threshold = unrolled[name]
        pred = predict_unrolled(net, model, y, x0, post, n_samples, seed=seed)
        if threshold is None:
            return pred.samples.cpu(), pred.mean.cpu(), pred.std.cpu()
        # the refined mean; samples shifted with it, the network's std kept (then calibrated like the rest);
        # as petuq reconstruct: model-error guard included (computed once per data set: ``guard``)
        pred, ref = refine_posterior_mean(model, y, pred, threshold, check_model_fit=True, model_error=guard)
        refinement_log[name] = {
            "iterations_mean": float(ref.iterations.double().mean()),
            "iterations_max": int(ref.iterations.max()),
            "z_start_mean": float(ref.z_start.mean()),
            "reached_fraction": float(ref.reached.double().mean()),
            "skipped_fraction": float(ref.skipped.double().mean()),
            **(
                {
                    "model_fit_z_max": float(ref.model_fit_z.max()),
                    "model_error_z_mean": float(ref.model_error_z.mean()),
                    "stop_threshold_mean": float(torch.as_tensor(ref.threshold).double().mean()),
                }
                if ref.model_fit_z is not None
                else {}
            ),
        }
        return pred.samples.cpu(), pred.mean.cpu(), pred.std.cpu()

    def run_denoiser(x, seed, dose):
        m, z, ny, nx = x.shape
        dose_arg = torch.full((m * z,), float(dose)) if args.denoiser_dose_input else None
        post = denoiser.predict(x.reshape(m * z, ny, nx), max(n_samples, 8), seed, dose=dose_arg)
        mean = post.predictive_mean.reshape(m, z, ny, nx)
        std = post.total_std.reshape(m, z, ny, nx)
        samples = post.draw(per_sample=1, seed=seed).reshape(-1, m, z, ny, nx)
        return samples, mean, std

    def roi_size_group(msk: torch.Tensor) -> str:
        return size_group(equivalent_diameter_mm(msk, vox), ROI_SIZE_EDGES_MM)

    calibrators: dict[float, dict] = {}
    for dose in doses:
        cal = family_low_dose_set(layout, image, cal_families, "calibration", n_cal, dose * standard_counts, geometric)
        bm = cal.model(geometric)
        guard = model_error_z(bm, cal.prompts) if args.refine_discrepancy else None
        outs = {name: run_unrolled(name, bm, cal.prompts, cal.init, 1, guard) for name in unrolled}
        x_den = torch.stack(
            [
                osem_realisations(
                    geometric.with_terms(cal.multiplicative[i], cal.additive[i]), cal.prompts[i][None], 4, 8
                )[0]
                for i in range(len(cal))
            ]
        )
        outs["denoiser"] = run_denoiser(x_den, 1, dose)
        entry = {}
        for name, (s_, m_, sd_) in outs.items():
            cls = voxel_classes(m_, vox, class_spec, reference=x_den)  # x_den: plain OSEM of the same data
            body = cls < class_spec.num_classes
            mondrian = partial(MondrianConformal, levels=LEVELS, spec=class_spec)
            entry[name] = {
                "global": global_conformal("normalised", LEVELS).fit(cal.truth, cls, mean=m_, std=sd_, mask=body),
                "mondrian": mondrian("normalised").fit(cal.truth, cls, mean=m_, std=sd_, mask=body),
                "mondrian_cqr": mondrian("cqr").fit(cal.truth, cls, samples=s_, mask=body),
                # per-class std factor: RMS std = RMS error (bias included) on the calibration voxels
                "std_scaling": MondrianStdScaling().fit(cal.truth, cls, mean=m_, std=sd_, mask=body),
            }
            # ROI-level conformal on the calibration lesions (ROI mean of the mean image, std = mean voxel std)
            t_roi, c_roi, s_roi, g_roi = [], [], [], []
            for i, reg in enumerate(cal.regions):
                for k, msk in reg.items():
                    if k.startswith("lesion_"):
                        t_roi.append(float(roi_mean(cal.truth[i], msk)))
                        c_roi.append(float(roi_mean(m_[i], msk)))
                        s_roi.append(float(roi_mean(sd_[i], msk)))
                        g_roi.append(roi_size_group(msk))
            entry[name]["roi"] = RoiConformal(levels=LEVELS).fit(
                torch.tensor(t_roi), torch.tensor(c_roi), torch.tensor(s_roi)
            )
            # the same, one factor per lesion-size group (the size of a drawn VOI is known on a new scan)
            entry[name]["roi_size"] = RoiConformal(levels=LEVELS, min_group_size=ROI_MIN_GROUP).fit(
                torch.tensor(t_roi), torch.tensor(c_roi), torch.tensor(s_roi), groups=g_roi
            )
            entry[name]["roi_n"] = len(t_roi)
        calibrators[dose] = entry
        log(f"calibrated at dose {dose:g} on {len(cal)} anatomical calibration phantoms")

    # ---------------------------------------------------------------- 4. the frequentist protocol on test phantoms
    def region_stats(truth, regions, classes, *, lo_hi, mean, std_eff) -> dict:
        """Coverage curve, calibration error, width, std/RMSE per region; ``lo_hi`` level -> (lo, hi)."""
        res = {}
        err2 = (mean - truth) ** 2
        for rname in REGIONS:
            m = regions[rname]
            if not bool(m.any()):
                continue
            curve = {}
            for lv, (lo, hi) in lo_hi.items():
                inside = (truth >= lo) & (truth <= hi)
                curve[f"{lv:.2f}"] = float(inside[..., m].double().mean())
            lo90, hi90 = lo_hi[0.9]
            rmse = float(err2[..., m].double().mean().sqrt())
            res[rname] = {
                "coverage": curve,
                "calibration_error": calibration_error({float(k): v for k, v in curve.items()}),
                "width90": float((hi90 - lo90)[..., m].double().mean()),
                "std_over_rmse": float(std_eff[..., m].double().pow(2).mean().sqrt()) / max(rmse, 1e-12),
            }
        # std / RMSE per voxel class (classes of the reconstruction), pooled over realisations; and the sums
        # behind it (voxels, sum std^2, sum error^2) so that the summary can also pool over test phantoms
        per_class, sums = {}, {}
        for c in torch.unique(classes).tolist():
            sel = classes == c
            n = int(sel.sum())
            sums[str(c)] = [n, float(std_eff[sel].double().pow(2).sum()), float(err2[sel].double().sum())]
            if n < 200:
                continue
            rmse = float(err2[sel].double().mean().sqrt())
            per_class[str(c)] = float(std_eff[sel].double().pow(2).mean().sqrt()) / max(rmse, 1e-12)
        res["std_over_rmse_per_class"] = per_class
        res["per_class_sums"] = sums
        return res

    results: dict = {
        "settings": {
            "scanner": scanner.name,
            "image_shape": list(image.shape),
            "standard_counts": standard_counts,
            "doses": doses,
            "realisations": args.realisations,
            "test_phantoms_per_family": n_test,
            "test_start": args.test_start,
            "calibration_phantoms_per_family": n_cal,
            "voxel_class_spec": class_spec.to_dict(),
            "posterior_samples": n_samples,
            "denoiser": f"mc_dropout trained on {len(train)} images ({n_train} train seeds x {in_family} x doses)",
            "unrolled": {
                n: {
                    "net_config": v[2]["net_config"],
                    "families": v[2].get("families", ["random ellipses"]),
                    "counts_range": v[2].get("counts_range"),
                    "true_counts": v[2].get("true_counts"),
                    "command": v[2].get("command"),
                }
                for n, v in unrolled.items()
            },
            "denoiser_dose_input": args.denoiser_dose_input,
            "map_rdp_realisations": n_map,
            "in_family": in_family,
            "calibration_families": list(cal_families),
            "out_of_family": OUT_OF_FAMILY["held_out"],
            "quick": quick,
        },
        "cases": {},
    }
    example_maps = {}
    refinement_log.clear()  # the calibration runs' entries
    first = next(iter(unrolled))  # the network whose brain 5 % maps are drawn
    for family in test_families:
        for ti, seed in enumerate(seeds("test", n_test, start=args.test_start)):
            for dose in doses:
                ph, sim, model = case(family, seed, dose)
                truth = sim.truth
                regions = {k: ph.regions[k] for k in REGIONS}
                y = draws(sim, args.realisations, seed + 7)
                tuned = lookup(tuning, family, dose)
                row: dict = {"family": family, "seed": seed, "dose": dose, "lesions": []}
                obj = regions["object"]

                def nrmse_of(images, obj=obj, truth=truth):
                    t = truth[obj]
                    return float(np.mean([float(torch.linalg.norm(x[obj] - t) / torch.linalg.norm(t)) for x in images]))

                ref_osem = osem_reference(model, y, tuned["osem"])
                ref_map = torch.stack([map_rdp_reference(model, y[i], tuned["map_rdp"]) for i in range(n_map)])
                row["nrmse"] = {
                    "OSEM+optimal filter": nrmse_of(ref_osem),
                    "MAP-RDP (tuned)": nrmse_of(ref_map),
                }
                x0 = osem_realisations(model, y, 10, 1)
                guard = model_error_z(model, y) if args.refine_discrepancy else None
                outs = {name: run_unrolled(name, model, y, x0, seed, guard) for name in unrolled}
                x_den = osem_realisations(model, y, 4, 8)
                outs["denoiser"] = run_denoiser(x_den, seed, dose)
                for name, o in outs.items():
                    row["nrmse"][f"{name} (mean)"] = nrmse_of(o[1])
                row["discrepancy_refinement"] = {n: refinement_log.pop(n) for n in list(refinement_log)}
                methods = {}
                for name, (s_, m_, sd_) in outs.items():
                    cls = voxel_classes(m_, vox, class_spec, reference=x_den)
                    cals = calibrators[dose][name]
                    variants = {}
                    if name in unrolled:
                        # raw: mean -/+ z std (total std: weight draws + aleatoric head), as for the denoiser;
                        # the sample quantiles of only S draws are too narrow by construction (S = 4: ~0.6 at 90 %)
                        variants["raw"] = (
                            {lv: (m_ - gaussian_quantile(lv) * sd_, m_ + gaussian_quantile(lv) * sd_) for lv in LEVELS},
                            sd_,
                        )
                        q = {lv: torch.quantile(s_, torch.tensor([0.5 - lv / 2, 0.5 + lv / 2]), dim=0) for lv in LEVELS}
                        variants["raw sample quantiles"] = ({lv: (v[0], v[1]) for lv, v in q.items()}, sd_)
                        # the stored scales of the count level nearest this dose (one level in older files)
                        stored = calibration_for_counts(unrolled[name][2], dose * standard_counts)[0]
                        shipped_scales = conformal_scales_of(stored)
                        if shipped_scales:
                            variants["global conformal (stored with the weights)"] = (
                                {
                                    lv: (
                                        m_ - shipped_scales[lv] * gaussian_quantile(lv) * sd_,
                                        m_ + shipped_scales[lv] * gaussian_quantile(lv) * sd_,
                                    )
                                    for lv in LEVELS
                                },
                                sd_ * shipped_scales[0.9],
                            )
                    else:
                        variants["raw"] = (
                            {lv: (m_ - gaussian_quantile(lv) * sd_, m_ + gaussian_quantile(lv) * sd_) for lv in LEVELS},
                            sd_,
                        )
                    for vname, key in (
                        ("global conformal (anatomical)", "global"),
                        ("Mondrian", "mondrian"),
                        ("Mondrian CQR", "mondrian_cqr"),
                    ):
                        c = cals[key]
                        kw = {"samples": s_} if key == "mondrian_cqr" else {"mean": m_, "std": sd_}
                        lh = {lv: c.interval(cls, lv, **kw) for lv in LEVELS}
                        lo90, hi90 = lh[0.9]
                        variants[vname] = (lh, (hi90 - lo90) / (2 * gaussian_quantile(0.9)))
                    scaler = cals["std_scaling"]  # Gaussian intervals of the per-class rescaled std
                    variants["Mondrian std scaling"] = (
                        {lv: scaler.interval(cls, lv, mean=m_, std=sd_) for lv in LEVELS},
                        scaler.scaled_std(cls, sd_),
                    )
                    per_variant = {}
                    for vname, (lh, std_eff) in variants.items():
                        lh = {lv: (lo.to(truth.dtype), hi.to(truth.dtype)) for lv, (lo, hi) in lh.items()}
                        per_variant[vname] = region_stats(
                            truth, regions, cls, lo_hi=lh, mean=m_, std_eff=std_eff.to(truth.dtype)
                        )
                    # lesion ROI means: raw (samples) and ROI-conformal (calibration lesions)
                    lesion_rows = []
                    for li, les in enumerate(ph.lesions):
                        msk = ph.regions[f"lesion_{li}"]
                        t_roi = float(roi_mean(truth, msk))
                        rs = roi_mean_samples(s_, msk)  # (S, M)
                        raw_cov = roi_coverage(torch.tensor(t_roi), *roi_interval_samples(rs, 0.9))
                        centre = roi_mean(m_, msk)
                        spread = roi_mean(sd_, msk)
                        lo, hi = cals["roi"].interval(centre, spread, 0.9)
                        grp = roi_size_group(msk)
                        lo_s, hi_s = cals["roi_size"].interval(centre, spread, 0.9, groups=[grp] * len(centre))
                        lesion_rows.append(
                            {
                                "diameter_mm": les.diameter_mm,
                                "contrast": les.contrast,
                                "voxels": int(msk.sum()),
                                "size_group": grp,
                                "roi_bias": float(centre.mean() / t_roi - 1),
                                "coverage90_raw": raw_cov,
                                "coverage90_roi_conformal": roi_coverage(torch.tensor(t_roi), lo, hi),
                                "width90_rel_roi_conformal": float((hi - lo).mean() / t_roi),
                                "coverage90_roi_conformal_size": roi_coverage(torch.tensor(t_roi), lo_s, hi_s),
                                "width90_rel_roi_conformal_size": float((hi_s - lo_s).mean() / t_roi),
                            }
                        )
                    methods[name] = {
                        "variants": per_variant,
                        "lesion_roi": lesion_rows,
                        "roi_calibration_lesions": calibrators[dose][name]["roi_n"],
                        "roi_calibration_lesions_per_size_group": calibrators[dose][name]["roi_size"].counts,
                    }
                    if family == "brain" and ti == 0 and math.isclose(dose, doses[0]) and name == first:
                        lo90, hi90 = cals["mondrian"].interval(cls, 0.9, mean=m_, std=sd_)
                        example_maps = {
                            "truth": truth[0],
                            "bias": (m_.mean(0) - truth)[0],
                            "std": sd_.mean(0)[0],
                            "rmse": ((m_ - truth) ** 2).mean(0).sqrt()[0],
                            "coverage90 (Mondrian)": ((truth >= lo90) & (truth <= hi90)).double().mean(0)[0],
                            "classes": cls[0, 0],
                        }
                        results["settings"]["map_method"] = name
                row["methods"] = methods
                results["cases"][f"{family}-{seed}@{dose:g}"] = row
                log(f"{family} {seed} dose {dose:g} done")

    results["cpu_seconds"] = time.process_time() - cpu0
    print_tables(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    figure(results, example_maps, out / "heldout_uq.png")
    log(f"wrote {out / 'results.json'} and {out / 'heldout_uq.png'}")


def summarise(results: dict) -> dict:
    """Mean over test phantoms per (family, dose, method variant)."""
    from petuq_sirf.uq.mondrian import VoxelClassSpec

    spec = results["settings"].get("voxel_class_spec")  # absent in runs before the contrast axis: the plain classes
    body_classes = (VoxelClassSpec.from_dict(spec) if spec else VoxelClassSpec()).num_classes  # last: outside body
    agg: dict = {}
    pooled: dict = {}  # (family, dose) -> method variant -> class -> [voxels, sum std^2, sum error^2]
    for row in results["cases"].values():
        key = (row["family"], row["dose"])
        tgt = agg.setdefault(key, {"nrmse": {}, "methods": {}})
        for k, v in row["nrmse"].items():
            tgt["nrmse"].setdefault(k, []).append(v)
        for name, m in row["methods"].items():
            for vname, stats in m["variants"].items():
                d = tgt["methods"].setdefault(f"{name}: {vname}", {})
                for rname in REGIONS:
                    if rname in stats:
                        d.setdefault(f"{rname}_cov90", []).append(stats[rname]["coverage"]["0.90"])
                        d.setdefault(f"{rname}_ce", []).append(stats[rname]["calibration_error"])
                        d.setdefault(f"{rname}_ratio", []).append(stats[rname]["std_over_rmse"])
                d.setdefault("object_width90", []).append(stats["object"]["width90"])
                ratios = list(stats["std_over_rmse_per_class"].values())
                if ratios:
                    d.setdefault("class_ratio_min", []).append(min(ratios))
                    d.setdefault("class_ratio_max", []).append(max(ratios))
                for c, v in stats.get("per_class_sums", {}).items():
                    if int(c) < body_classes:  # inside the body outline
                        acc = pooled.setdefault(key, {}).setdefault(f"{name}: {vname}", {}).setdefault(c, [0, 0.0, 0.0])
                        acc[:] = [a + b for a, b in zip(acc, v)]
            les = m["lesion_roi"]
            if les:
                d_raw = tgt["methods"].setdefault(f"{name}: raw", {})
                d_raw.setdefault("roi_cov90", []).extend(r["coverage90_raw"] for r in les)
                d_c = tgt["methods"].setdefault(f"{name}: ROI conformal", {})
                d_c.setdefault("roi_cov90", []).extend(r["coverage90_roi_conformal"] for r in les)
                if "coverage90_roi_conformal_size" in les[0]:  # results.json of runs before the size groups lack it
                    d_s = tgt["methods"].setdefault(f"{name}: ROI conformal by size", {})
                    d_s.setdefault("roi_cov90", []).extend(r["coverage90_roi_conformal_size"] for r in les)
    out = {
        k: {
            "nrmse": {n: float(np.mean(v)) for n, v in t["nrmse"].items()},
            "methods": {n: {s: float(np.mean(v)) for s, v in d.items()} for n, d in t["methods"].items()},
        }
        for k, t in agg.items()
    }
    # std / RMSE per voxel class pooled over the test phantoms (and realisations): what a class-level
    # calibration can promise; classes with >= POOLED_MIN_VOXELS voxel-realisations; 'in band' = the fraction
    # of body voxel-realisations whose class has a ratio in [0.8, 1.25]
    for key, per_variant in pooled.items():
        for vname, classes in per_variant.items():
            ratios, total, inside = [], 0, 0
            for n, s2, e2 in classes.values():
                total += n
                if n < POOLED_MIN_VOXELS:
                    continue
                r = math.sqrt(s2 / n) / max(math.sqrt(e2 / n), 1e-12)
                ratios.append(r)
                inside += n if 0.8 <= r <= 1.25 else 0
            if ratios:
                d = out[key]["methods"][vname]
                d["pooled_class_ratio_min"], d["pooled_class_ratio_max"] = min(ratios), max(ratios)
                d["pooled_class_in_band"] = inside / max(total, 1)
    return out


def print_tables(results: dict) -> None:
    summary = summarise(results)
    results["summary"] = {f"{f}@{d:g}": v for (f, d), v in summary.items()}
    for (family, dose), s in summary.items():
        tag = "out-of-family" if family in results["settings"]["out_of_family"] else "in-family"
        counts = dose * results["settings"]["standard_counts"]
        print(f"\n=== {family} ({tag}), dose {dose:g} ({counts:.0e} true counts) ===")
        print("NRMSE (object): " + ", ".join(f"{k} {v:.3f}" for k, v in s["nrmse"].items()))
        hdr = f"{'method':<48}{'obj90':>7}{'les90':>7}{'edge90':>7}{'bg90':>7}{'CE obj':>8}{'w90':>8}"
        hdr += f"{'sd/rmse':>8}{'cls min-max':>13}{'pooled cls':>12}{'in band':>8}{'ROI90':>7}"
        print(hdr)
        for name, d in s["methods"].items():

            def g(k, fmt="{:7.3f}", d=d):
                return fmt.format(d[k]) if k in d else " " * len(fmt.format(0.0))

            cls = f"{d['class_ratio_min']:.2f}-{d['class_ratio_max']:.2f}" if "class_ratio_min" in d else ""
            pcl = (
                f"{d['pooled_class_ratio_min']:.2f}-{d['pooled_class_ratio_max']:.2f}"
                if "pooled_class_ratio_min" in d
                else ""
            )
            print(
                f"{name:<48}{g('object_cov90')}{g('lesions_cov90')}{g('edges_cov90')}{g('background_cov90')}"
                f"{g('object_ce', '{:8.3f}')}{g('object_width90', '{:8.3f}')}{g('object_ratio', '{:8.2f}')}"
                f"{cls:>13}{pcl:>12}{g('pooled_class_in_band', '{:8.2f}')}{g('roi_cov90')}"
            )


def markdown_tables(results: dict) -> None:
    """The summary as markdown (for docs/heldout_uq.md)."""
    summary = summarise(results)
    for (family, dose), s in summary.items():
        tag = "out-of-family" if family in results["settings"]["out_of_family"] else "in-family"
        print(
            f"\n**{family} ({tag}), {dose * 100:g} % dose ({dose * results['settings']['standard_counts']:.0e} counts)**"
        )
        print("NRMSE (object): " + "; ".join(f"{k} {v:.3f}" for k, v in s["nrmse"].items()) + "\n")
        print(
            "| method | object 90 % | lesions 90 % | edges 90 % | background 90 % | cal. err (object) | "
            "width 90 % | std/RMSE (object) | std/RMSE per class (min–max) | per class pooled over phantoms "
            "(min–max; voxels in 0.8–1.25) | lesion ROI-mean 90 % |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, d in s["methods"].items():

            def g(k, fmt="{:.3f}", d=d):
                return fmt.format(d[k]) if k in d else "–"

            cls = f"{d['class_ratio_min']:.2f}–{d['class_ratio_max']:.2f}" if "class_ratio_min" in d else "–"
            pcl = (
                f"{d['pooled_class_ratio_min']:.2f}–{d['pooled_class_ratio_max']:.2f}; {d['pooled_class_in_band']:.2f}"
                if "pooled_class_ratio_min" in d
                else "–"
            )
            print(
                f"| {name} | {g('object_cov90')} | {g('lesions_cov90')} | {g('edges_cov90')} | "
                f"{g('background_cov90')} | {g('object_ce')} | {g('object_width90', '{:.3g}')} | "
                f"{g('object_ratio', '{:.2f}')} | {cls} | {pcl} | {g('roi_cov90')} |"
            )


def lesion_table(results: dict) -> None:
    """Per test lesion (size, contrast) and method: ROI-mean bias and 90 % ROI-mean coverage (markdown)."""
    print("\n**Lesion ROI means per lesion** (bias of the mean image's ROI mean; coverage over realisations)\n")
    print(
        "| phantom | dose | lesion Ø (mm) | contrast | voxels | method | ROI bias | raw 90 % | ROI conformal 90 % "
        "(width / true mean) | by size: group, 90 % (width / true mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, row in results["cases"].items():
        for name, m in row["methods"].items():
            for les in m["lesion_roi"]:
                by_size = (
                    f"{les['size_group']}, {les['coverage90_roi_conformal_size']:.2f} "
                    f"({les['width90_rel_roi_conformal_size']:.2f})"
                    if "size_group" in les
                    else "–"
                )
                pooled = f"{les['coverage90_roi_conformal']:.2f}"
                if "width90_rel_roi_conformal" in les:
                    pooled += f" ({les['width90_rel_roi_conformal']:.2f})"
                print(
                    f"| {key.split('@')[0]} | {row['dose'] * 100:g} % | {les['diameter_mm']:.1f} | "
                    f"{les['contrast']:.2f} | {les['voxels']} | {name} | {les['roi_bias']:+.2f} | "
                    f"{les['coverage90_raw']:.2f} | {pooled} | {by_size} |"
                )


def figure(results: dict, maps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    keys = list(summary)
    fig, axes = plt.subplots(2, max(3, len(maps)), figsize=(3.2 * max(3, len(maps)), 6.4))
    doses = sorted({float(k.rsplit("@", 1)[1]) for k in keys})
    top = [k for d in (doses[0], doses[-1]) for k in keys if float(k.rsplit("@", 1)[1]) == d]
    top = list(dict.fromkeys(top))[: axes.shape[1]]  # lowest and highest dose, each family once
    for ax, key in zip(axes[0], top):
        for row in results["cases"].values():
            if f"{row['family']}@{row['dose']:g}" != key:
                continue
            for name, m in row["methods"].items():
                for vname in ("raw", "Mondrian"):
                    cov = m["variants"][vname]["object"]["coverage"]
                    ax.plot([float(k) for k in cov], list(cov.values()), marker="o", label=f"{name} {vname}")
            break
        ax.plot([0.5, 0.95], [0.5, 0.95], "k--", lw=0.8)
        family, dose = key.rsplit("@", 1)
        ax.set_title(f"object coverage, {family}, {100 * float(dose):g} % dose", fontsize=8)
        ax.set_xlabel("nominal")
        ax.set_ylabel("observed")
    axes[0][0].legend(fontsize=6)
    for ax, (name, img) in zip(axes[1], maps.items()):
        im = ax.imshow(img.numpy(), cmap="RdBu_r" if name == "bias" else "viridis")
        ax.set_title(f"{results['settings'].get('map_method', 'unrolled')}, brain 5 %: {name}", fontsize=8)
        ax.axis("off")
        unit = {"coverage90 (Mondrian)": "fraction of realisations", "classes": "voxel class"}.get(
            name, "activity (reconstruction units)"
        )
        fig.colorbar(im, ax=ax, fraction=0.046).set_label(unit, fontsize=7)
    for ax in list(axes[0][len(top) :]) + list(axes[1][len(maps) :]):
        ax.axis("off")
    s = results["settings"]
    fig.suptitle(
        f"held-out UQ, {s['scanner']} {tuple(s.get('image_shape', (1, 64, 64)))}, {s['realisations']} realisations, standard dose {s['standard_counts']:.0e} counts",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
