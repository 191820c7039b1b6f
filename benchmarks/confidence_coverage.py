"""Coverage and width of the anytime-valid ROI confidence intervals (sequential likelihood mixing).

Held-out phantoms only (no shipped network saw their seeds; the default unrolled network ``fbsem32w`` was
trained on thorax, ellipse and texture training seeds, never on a brain): the procedural anatomical
families of :mod:`petuq_sirf.simulation.phantom_families` (``--families brain,thorax``: TEST seeds, their
random lesions and the background as ROIs) and, with ``--phantoms``, the fixed NEMA IEC-like / brain-like
phantoms. Poisson realisations of the exact model mean are split into equal time frames (frame 1 a
burn-in). Estimators: OSEM, MAP-RDP, the shipped unrolled network (default ``fbsem32w``, before 2026-12-07 ``fbsem32``;
``--unrolled-weights``) and a deliberately bad constant image (3x the background level).

Every realisation goes through the ROI solver (realisations of one phantom are solved together, one
batched projector call per iteration). Reported per family, estimator and ROI kind (lesions pooled,
background): coverage of the true ROI mean by the interval of the last frame, by the running interval
at every frame at once (= coverage under the adversarial "stop at the first miss" rule) and at the
frame chosen by a stop-when-narrow rule, with binomial standard errors; median widths; set coverage
(truth in ``C_t`` at every frame); solver diagnostics (KKT stationarity / dual infeasibility,
primal-dual gap, constraint residual, empty sets). Also, per phantom: the prior-mixing variant
(``prior_mixing_threshold``: half of the full-scan events fit the unrolled network's weight draws and
an OSEM point estimate, the other half evaluates), and the 90 % intervals of the posterior bootstrap
(OSEM on Gamma-weighted counts) and of the unrolled network's Bayesian posterior for comparison.
``--extra-counts`` repeats a smaller run at other count levels (width vs counts).

    PYTHONPATH=$PWD python benchmarks/confidence_coverage.py --families brain,thorax   # main run
    PYTHONPATH=$PWD python benchmarks/confidence_coverage.py --quick                   # smoke run
    PETUQ_PROJECTOR_KERNEL=torch PYTHONPATH=$PWD python benchmarks/confidence_coverage.py --scanner test-3d \
        --rings 4 --phantoms-per-family 2 --realisations 10 --counts 3.5e5 \
        --out docs/figures/confidence_3d --name confidence_coverage_3d                  # small 3D case

``--rings N`` keeps the first ``N`` rings of the scanner (test-3d with 4 rings: 7 image planes, 16 sinograms
of ring differences -3..3); ``PETUQ_PROJECTOR_KERNEL=torch`` lets the projector keep its sparse matrix
(faster on one CPU thread than the compiled ring-shift kernel at this size).

Writes ``docs/figures/confidence/<name>.json`` and ``.png`` (``--name``); prints tables.
"""

from __future__ import annotations

import argparse
import hashlib
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
from petuq_sirf.confidence.roi_solver import SolverConfig, roi_bounds, roi_weights
from petuq_sirf.confidence.sets import (
    batch_intervals,
    frame_counts,
    past_model,
    prior_mixing_threshold,
    split_events_counts,
)
from petuq_sirf.recon.em import osem
from petuq_sirf.recon.unrolled import predict_unrolled
from petuq_sirf.recon.weights import WEIGHTS_DIR
from petuq_sirf.recon.weights import load_network as load_weights
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import SimulationConfig, simulate

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "confidence"
NAMED_ROIS = {"nema": ("hot_sphere_22mm", "background"), "brain": ("hot_lesion", "background")}


def build_geometry(
    scanner: str, rings: int | None = None, num_xy: int | None = None
) -> tuple[SinogramLayout, ImageGeometry]:
    """The sinogram layout (span 1, all ring differences) and STIR's default image for ``scanner``.

    ``rings``: keep only the first ``rings`` rings of the scanner (a reduced-ring copy named
    ``<scanner>-<rings>rings``, e.g. test-3d with 4 rings: 7 image planes of 2 mm, 16 sinograms of ring
    differences -3..3); ``num_xy``: in-plane image size (voxels of the scanner's bin size, mm).
    """
    sc = get_scanner(scanner)
    if rings is not None:
        if not 1 <= rings <= sc.num_rings:
            raise ValueError(f"--rings must be in 1..{sc.num_rings} for {sc.name}, got {rings}")
        if rings != sc.num_rings:
            sc = sc.with_(name=f"{sc.name}-{rings}rings", num_rings=rings)
    if num_xy is not None and num_xy < 1:
        raise ValueError(f"--num-xy must be >= 1, got {num_xy}")
    layout = SinogramLayout(sc)
    return layout, ImageGeometry.for_layout(layout, num_xy=num_xy)


def projector_timing(
    layout: SinogramLayout, image: ImageGeometry, family: str = "brain", batches: tuple[int, ...] = (1, 16, 100)
) -> list[dict]:
    """Seconds (wall and CPU) of one forward + back projection of the simulated acquisition model, per batch size.

    The model is that of the first test phantom of ``family``, as the run builds it; the first call of
    each batch size is a warm-up (not timed), then the best of 3 repetitions is reported.
    """
    from petuq_sirf.simulation.phantom_families import family_phantom, seeds

    ph = family_phantom(family, image, seeds("test", 1)[0])
    model = simulate(ph, layout, SimulationConfig(true_counts=1e5, seed=11)).acquisition_model()
    rows = []
    for b in batches:
        x = torch.ones(b, *image.shape)
        model.adjoint(model.forward(x))
        wall, cpu = [], []
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            model.adjoint(model.forward(x))
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rows.append({"batch": b, "wall_s": min(wall), "cpu_s": min(cpu)})
        print(
            f"{layout.scanner.name} image {tuple(image.shape)} sinograms {tuple(layout.shape)} "
            f"[{getattr(getattr(model, 'projector', None), 'path', '?')}]: batch {b:4d} forward+back "
            f"{min(wall) * 1e3:.1f} ms wall, {min(cpu) * 1e3:.1f} ms CPU ({min(wall) / b * 1e3:.2f} ms per image)",
            flush=True,
        )
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _bootstrap_interval(model, y, mask, replicates, level=0.9):
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


def _phantoms(args, image):
    """``[(family label, phantom, ROI names)]``: family test seeds and/or named phantoms."""
    out = []
    if args.families:
        from petuq_sirf.simulation.phantom_families import family_phantom, seeds

        for fam in args.families.split(","):
            for s in seeds("test", args.phantoms_per_family, start=args.seed_start):
                ph = family_phantom(fam, image, s)
                rois = [k for k in ph.regions if k.startswith("lesion_")] + ["background"]
                out.append((f"{fam}-family", ph, rois))
    if args.phantoms:
        from petuq_sirf.simulation.phantoms import make_phantom

        for name in args.phantoms.split(","):
            out.append((name, make_phantom(name, image), list(NAMED_ROIS[name])))
    return out


def run_phantom(label, ph, roi_names, args, counts, n_real, net, posterior, layout, seed):
    """All realisations of one phantom at one count level; per-ROI records."""
    sim = simulate(ph, layout, SimulationConfig(true_counts=counts, seed=11))
    model = sim.acquisition_model()
    truth = sim.truth
    expected = model.forward(truth)
    masks = {r: sim.regions[r] for r in roi_names}
    level = float(truth[sim.regions["background"]].mean())
    ests = {
        "osem": osem_estimator(4, 8),
        "map-rdp": map_rdp_estimator(0.01, iterations=args.map_iterations),
        "bad-constant": constant_estimator(torch.where(model.sensitivity() > 0, 3.0 * level, 0.0)),
    }
    if net is not None:
        ests["unrolled"] = unrolled_estimator(net)
    gen = torch.Generator().manual_seed(seed)
    reals = [frame_counts(expected, args.frames, 600.0, gen) for _ in range(n_real)]
    cfg = SolverConfig(ml_iterations=args.ml_iterations, inner_iterations=args.inner_iterations)
    t0 = time.perf_counter()
    out = batch_intervals(model, reals, ests, masks, args.alpha, truth=truth, config=cfg)
    t_seq = time.perf_counter() - t0
    names = out["estimators"]
    truth_roi = out["truth_roi"]
    rec = {
        "label": label,
        "phantom": ph.name,
        "true_counts": counts,
        "realisations": n_real,
        "rois": roi_names,
        "roi_voxels": {r: int(masks[r].sum()) for r in roi_names},
        "projector": getattr(getattr(model, "projector", None), "path", None),
        "truth_roi_mean": truth_roi,
        "estimators": names,
        "counts_cumulative_mean": out["counts"].mean(0).tolist(),
        "frame_end_s": out["frame_end_s"],
        "wall_s": {"sequential": t_seq},
    }
    t_arr = np.array([truth_roi[r] for r in roi_names])[None, None, :, None]
    lo, hi = out["lower"], out["upper"]
    rlo, rhi = out["running_lower"], out["running_upper"]
    rec["covered_last"] = ((lo[..., -1] <= t_arr[..., 0]) & (t_arr[..., 0] <= hi[..., -1])).tolist()  # (P, E, R)
    rec["covered_running_all_frames"] = ((rlo <= t_arr) & (t_arr <= rhi)).all(-1).tolist()
    # stop-when-narrow: the first frame whose running relative width is below the target (else the last)
    mid = 0.5 * (rlo + rhi)
    rel = np.where(mid > 0, (rhi - rlo) / np.maximum(mid, 1e-12), np.inf)
    narrow = rel < args.stop_relative_width
    stop = np.where(narrow.any(-1), narrow.argmax(-1), rel.shape[-1] - 1)  # (P, E, R)
    s_lo = np.take_along_axis(rlo, stop[..., None], -1)[..., 0]
    s_hi = np.take_along_axis(rhi, stop[..., None], -1)[..., 0]
    rec["stop_frame_index"] = stop.tolist()
    rec["covered_at_stop"] = ((s_lo <= t_arr[..., 0]) & (t_arr[..., 0] <= s_hi)).tolist()
    rec["width_per_frame"] = (hi - lo).tolist()  # (P, E, R, F)
    rec["running_width_per_frame"] = (rhi - rlo).tolist()
    rec["truth_in_set_every_frame"] = out["truth_in_set"].all(-1).tolist()  # (P, E)
    rec["kkt_stationarity"] = out["kkt_stationarity"].tolist()
    rec["kkt_dual_infeasibility"] = out["kkt_dual_infeasibility"].tolist()
    rec["relative_gap"] = (
        ((out["lower_primal"] - lo) + (hi - out["upper_primal"])) / np.maximum(hi - lo, 1e-12)
    ).tolist()
    rec["constraint_residual_nats"] = out["constraint"].tolist()
    rec["empty"] = out["empty"].tolist()
    rec["multipliers_max"] = int(out["multipliers"].max())
    rec["drop_ml_minus_threshold_median"] = {
        n: float(np.median(out["ml_log_likelihood"][:, -1] - out["threshold"][:, j, -1])) for j, n in enumerate(names)
    }

    # prior mixing: half the full-scan events fit, half evaluate (one look)
    t0 = time.perf_counter()
    sgen = torch.Generator().manual_seed(seed + 1)
    fits, evals = zip(*(split_events_counts(fr.counts.sum(0), 0.5, sgen) for fr in reals), strict=True)
    fit_model = past_model(model, 0.5)
    pm_names = ["osem-point"] + (["unrolled-draws"] if net is not None else [])
    thr = np.zeros((n_real, len(pm_names)))
    for p, (yf, ye) in enumerate(zip(fits, evals, strict=True)):
        x_osem = ests["osem"](fit_model, yf)
        thr[p, 0] = prior_mixing_threshold(model, ye, 0.5, x_osem, args.alpha)
        if net is not None:
            x0 = osem(fit_model, yf, 10, 1).image
            draws = predict_unrolled(
                net, fit_model, yf, x0, posterior, args.mixing_draws, aleatoric=False, seed=p
            ).samples.clamp_min(0)
            thr[p, 1] = prior_mixing_threshold(model, ye, 0.5, draws, args.alpha)
    w = roi_weights(torch.stack([masks[r] for r in roi_names]))
    pm = roi_bounds(model, torch.stack(evals), 0.5, w, torch.as_tensor(thr), cfg)
    t_arr2 = np.array([truth_roi[r] for r in roi_names])[None, :, None]
    plo, phi = pm.lower.numpy(), pm.upper.numpy()  # (P, R, C)
    rec["prior_mixing"] = {
        "estimators": pm_names,
        "covered": ((plo <= t_arr2) & (t_arr2 <= phi)).transpose(0, 2, 1).tolist(),  # (P, C, R)
        "width": (phi - plo).transpose(0, 2, 1).tolist(),
        "kkt_stationarity": pm.kkt_stationarity.numpy().transpose(0, 2, 1).tolist(),
        "relative_gap": ((pm.gap_lower + pm.gap_upper) / (pm.upper - pm.lower).clamp_min(1e-12))
        .numpy()
        .transpose(0, 2, 1)
        .tolist(),
    }
    rec["wall_s"]["prior_mixing"] = time.perf_counter() - t0

    # comparison intervals (full scan), first realisations
    t0 = time.perf_counter()
    comp = {"bootstrap": [], "bayes-unrolled": []}
    torch.manual_seed(seed + 2)
    for fr in reals[: args.comparison_realisations]:
        y = fr.counts.sum(0)
        comp["bootstrap"].append(
            [_bootstrap_interval(model, y, masks[r], args.bootstrap_replicates) for r in roi_names]
        )
        if net is not None:
            comp["bayes-unrolled"].append(
                [_bayes_interval(net, posterior, model, y, masks[r], args.bayes_samples) for r in roi_names]
            )
    rec["comparison"] = {}
    for n, ivs in comp.items():
        if not ivs:
            continue
        a = np.array(ivs)  # (P', R, 2)
        rec["comparison"][n] = {
            "covered": ((a[..., 0] <= t_arr2[..., 0]) & (t_arr2[..., 0] <= a[..., 1])).tolist(),
            "width": (a[..., 1] - a[..., 0]).tolist(),
        }
    rec["wall_s"]["comparison"] = time.perf_counter() - t0
    print(
        f"  [{label} {ph.name} {counts:.3g} counts, {n_real} realisations, ROIs {roi_names}] "
        f"wall s { ({k: round(v) for k, v in rec['wall_s'].items()}) }",
        flush=True,
    )
    return rec


def _kind(roi: str) -> str:
    return "lesion" if roi.startswith("lesion_") or roi.startswith("hot_") else roi


def _interval_summary(recs: list[dict], pick) -> dict:
    """Coverage (with SE), median (relative) width and, if present, max KKT stationarity per ROI kind;
    ``pick(record)`` gives ``{"covered", "width"[, "kkt_stationarity"]}`` arrays of shape (realisations, ROIs)."""
    out = {}
    for kind in ("lesion", "background"):
        cov, wid, relw, kkt = [], [], [], []
        for r in recs:
            a = pick(r)
            for i, roi in enumerate(r["rois"]):
                if _kind(roi) == kind:
                    cov += list(a["covered"][:, i])
                    wid += list(a["width"][:, i])
                    relw += list(a["width"][:, i] / r["truth_roi_mean"][roi])
                    if "kkt_stationarity" in a:
                        kkt += list(a["kkt_stationarity"][:, i])
        if cov:
            p = float(np.mean(cov))
            out[kind] = {
                "n": len(cov),
                "coverage": p,
                "coverage_se": _se(p, len(cov)),
                "median_width": float(np.median(wid)),
                "median_relative_width": float(np.median(relw)),
            }
            if kkt:
                out[kind]["kkt_stationarity_max"] = float(np.max(kkt))
    return out


def summarise(records: list[dict]) -> dict:
    """Pool the records per (label, counts): per estimator and ROI kind."""
    groups: dict = {}
    for rec in records:
        groups.setdefault((rec["label"], rec["true_counts"]), []).append(rec)
    summary = []
    for (label, counts), recs in groups.items():
        names = recs[0]["estimators"]
        s = {"label": label, "true_counts": counts, "phantoms": [r["phantom"] for r in recs], "estimators": {}}
        s["realisations"] = int(sum(r["realisations"] for r in recs))
        s["counts_cumulative_mean"] = np.mean([r["counts_cumulative_mean"] for r in recs], 0).tolist()
        s["frame_end_s"] = recs[0]["frame_end_s"]
        for j, n in enumerate(names):
            e = {"set_coverage_every_frame": None, "rois": {}}
            ins = np.concatenate([np.array(r["truth_in_set_every_frame"])[:, j] for r in recs])
            e["set_coverage_every_frame"] = float(ins.mean())
            e["set_coverage_se"] = _se(float(ins.mean()), ins.size)
            simul = np.concatenate([np.array(r["covered_running_all_frames"])[:, j].all(-1) for r in recs])
            e["all_rois_all_frames_coverage"] = float(simul.mean())
            e["all_rois_all_frames_se"] = _se(float(simul.mean()), simul.size)
            for kind in ("lesion", "background"):
                cov_l, cov_r, cov_s, wid, rwid, relw, kkt, kkd, gap, con, emp, stopf = ([] for _ in range(12))
                for r in recs:
                    for i, roi in enumerate(r["rois"]):
                        if _kind(roi) != kind:
                            continue
                        t = r["truth_roi_mean"][roi]
                        cov_l += list(np.array(r["covered_last"])[:, j, i])
                        cov_r += list(np.array(r["covered_running_all_frames"])[:, j, i])
                        cov_s += list(np.array(r["covered_at_stop"])[:, j, i])
                        wf = np.array(r["running_width_per_frame"])[:, j, i]
                        rwid.append(wf)
                        relw += list(wf[:, -1] / t)
                        wid += list(np.array(r["width_per_frame"])[:, j, i, -1])
                        kkt += list(np.array(r["kkt_stationarity"])[:, j, i].ravel())
                        kkd += list(np.array(r["kkt_dual_infeasibility"])[:, j, i].ravel())
                        gap += list(np.array(r["relative_gap"])[:, j, i].ravel())
                        con += list(np.array(r["constraint_residual_nats"])[:, j, i].ravel())
                        emp += list(np.array(r["empty"])[:, j, i].ravel())
                        stopf += list(np.array(r["stop_frame_index"])[:, j, i])
                if not cov_l:
                    continue
                m = len(cov_l)
                e["rois"][kind] = {
                    "n": m,
                    "coverage_last_frame": float(np.mean(cov_l)),
                    "coverage_last_frame_se": _se(float(np.mean(cov_l)), m),
                    "coverage_running_all_frames": float(np.mean(cov_r)),
                    "coverage_running_all_frames_se": _se(float(np.mean(cov_r)), m),
                    "coverage_stop_when_narrow": float(np.mean(cov_s)),
                    "coverage_stop_when_narrow_se": _se(float(np.mean(cov_s)), m),
                    "stop_frame_index_mean": float(np.mean(stopf)),
                    "median_width_last_frame": float(np.median(wid)),
                    "median_running_width_per_frame": np.median(np.concatenate(rwid), 0).tolist(),
                    "median_relative_width_last_frame": float(np.median(relw)),
                    "kkt_stationarity_max": float(np.max(kkt)),
                    "kkt_stationarity_median": float(np.median(kkt)),
                    "kkt_dual_infeasibility_max": float(np.max(kkd)),
                    "relative_gap_median": float(np.median(gap)),
                    "relative_gap_max": float(np.max(gap)),
                    "constraint_residual_nats_median": float(np.nanmedian(con)),
                    "empty_sets": int(np.sum(emp)),
                }
            s["estimators"][n] = e
        # prior mixing and comparisons: (realisations, ROIs) arrays per record
        pm = recs[0]["prior_mixing"]["estimators"]
        s["prior_mixing"] = {
            n: _interval_summary(
                recs,
                lambda r, c=c: {
                    k: np.array(r["prior_mixing"][k])[:, c] for k in ("covered", "width", "kkt_stationarity")
                },
            )
            for c, n in enumerate(pm)
        }
        s["comparison"] = {
            n: _interval_summary(
                recs, lambda r, n=n: {k: np.array(r["comparison"][n][k]) for k in ("covered", "width")}
            )
            for n in recs[0]["comparison"]
        }
        summary.append(s)
    return summary


def _print(summary, alpha):
    for s in summary:
        print(
            f"\n== {s['label']} ({len(s['phantoms'])} phantoms), {s['true_counts']:.3g} true counts, alpha {alpha}, "
            f"{s['realisations']} realisations through the solver; counts in the sets per frame "
            f"{[round(c) for c in s['counts_cumulative_mean']]} =="
        )
        for n, e in s["estimators"].items():
            print(
                f"  {n:13s} set cov {e['set_coverage_every_frame']:.3f}±{e['set_coverage_se']:.3f}  "
                f"all ROIs all frames {e['all_rois_all_frames_coverage']:.3f}±{e['all_rois_all_frames_se']:.3f}"
            )
            for k, d in e["rois"].items():
                print(
                    f"      {k:10s} n={d['n']:4d} cov last {d['coverage_last_frame']:.3f}±{d['coverage_last_frame_se']:.3f} "
                    f"running-all {d['coverage_running_all_frames']:.3f} stop-narrow {d['coverage_stop_when_narrow']:.3f} "
                    f"(mean stop idx {d['stop_frame_index_mean']:.2f})  width {d['median_width_last_frame']:.3f} "
                    f"rel {d['median_relative_width_last_frame']:.2f}  running/frame "
                    f"{[round(x, 3) for x in d['median_running_width_per_frame']]}  KKT max {d['kkt_stationarity_max']:.1e} "
                    f"med {d['kkt_stationarity_median']:.1e} dual-inf max {d['kkt_dual_infeasibility_max']:.1e} "
                    f"gap med {d['relative_gap_median']:.3f} max {d['relative_gap_max']:.3f} empty {d['empty_sets']}"
                )
        for tag, block in (("prior mixing (half/half)", s["prior_mixing"]), ("comparison 90%", s["comparison"])):
            for n, d in block.items():
                for k, v in d.items():
                    print(
                        f"  {tag} {n:15s} {k:10s} n={v['n']:4d} cov {v['coverage']:.3f}±{v['coverage_se']:.3f} "
                        f"width {v['median_width']:.3f} rel {v['median_relative_width']:.2f}"
                    )


def _figure(summary, args, path):
    from petuq_sirf.viz.common import save_figure, subplots

    main = [s for s in summary if s["true_counts"] == args.counts]
    fig, axes = subplots(2, len(main), figsize=(6.0 * len(main), 7.6), squeeze=False)
    for col, s in enumerate(main):
        ax = axes[0, col]
        labels, covs, ses, colors = [], [], [], []
        for n, e in s["estimators"].items():
            for k, d in e["rois"].items():
                labels.append(f"{n}\n{k}")
                covs.append(d["coverage_running_all_frames"])
                ses.append(d["coverage_running_all_frames_se"])
                colors.append("C0" if k == "lesion" else "C1")
        for n, d in s["prior_mixing"].items():
            for k, v in d.items():
                labels.append(f"mix:{n}\n{k}")
                covs.append(v["coverage"])
                ses.append(v["coverage_se"])
                colors.append("C2")
        for n, d in s["comparison"].items():
            for k, v in d.items():
                labels.append(f"{n}\n{k}")
                covs.append(v["coverage"])
                ses.append(v["coverage_se"])
                colors.append("C3")
        x = np.arange(len(labels))
        ax.bar(x, covs, yerr=ses, color=colors, capsize=2)
        ax.axhline(1 - args.alpha, color="k", ls="--", lw=1, label=f"1 - alpha = {1 - args.alpha:.2f}")
        ax.set_xticks(x, labels, rotation=90, fontsize=5)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("coverage of the true ROI mean (±1 SE)")
        ax.set_title(
            f"{s['label']}, {args.scanner}{f'-{args.rings}rings' if args.rings else ''} {tuple(args.image_shape)}, {s['true_counts']:.3g} true counts, {args.frames} frames (1 burn-in),\n"
            f"alpha={args.alpha}, {s['realisations']} realisations; blue/orange: valid sets (all frames at once), "
            "green: prior mixing, red: 90% bootstrap/Bayes"
            + (f"; unrolled = {args.unrolled_weights}" if getattr(args, "unrolled_weights", "") else ""),
            fontsize=6,
        )
        ax.legend(fontsize=6)
        ax = axes[1, col]
        levels = sorted((t for t in summary if t["label"] == s["label"]), key=lambda t: t["true_counts"])
        for j, n in enumerate(s["estimators"]):
            if n == "bad-constant":
                continue
            for kind, ls in (("lesion", "-"), ("background", "--")):
                pts = [(t["counts_cumulative_mean"][-1], t["estimators"][n]["rois"][kind]) for t in levels]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1]["median_relative_width_last_frame"] for p in pts],
                    ls=ls,
                    marker="o",
                    color=f"C{j}",
                    label=f"{n} {kind}",
                )
        for n, mk in (("bootstrap", "x"), ("bayes-unrolled", "+")):
            for kind in ("lesion", "background"):
                pts = [
                    (
                        t["counts_cumulative_mean"][-1] * args.frames / (args.frames - 1),
                        t["comparison"].get(n, {}).get(kind),
                    )
                    for t in levels
                ]
                pts = [p for p in pts if p[1]]
                if pts:
                    ax.scatter(
                        [p[0] for p in pts],
                        [p[1]["median_relative_width"] for p in pts],
                        marker=mk,
                        color="k",
                        label=f"{n} 90% {kind} (full scan)",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("prompts in the sets at the last frame (frames 2..F); full scan for bootstrap/Bayes")
        ax.set_ylabel("median interval width / true ROI mean")
        ax.set_title(
            f"{s['label']}: relative width vs counts (alpha={args.alpha}; {args.counts:.3g} level pooled over "
            f"{len(s['phantoms'])} phantoms, other levels 1 phantom)",
            fontsize=7,
        )
        ax.legend(fontsize=5, ncol=2)
    save_figure(fig, path)


def parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="brain,thorax", help="phantom families (test seeds); '' for none")
    ap.add_argument("--phantoms", default="", help="named phantoms too: nema,brain")
    ap.add_argument("--phantoms-per-family", type=int, default=4)
    ap.add_argument("--seed-start", type=int, default=0, help="first test seed index")
    ap.add_argument("--realisations", type=int, default=25, help="Poisson realisations per phantom")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--counts", type=float, default=5e4, help="expected true counts of the full scan")
    ap.add_argument("--extra-counts", default="", help="other count levels, e.g. 1.25e4,2e5")
    ap.add_argument("--extra-phantoms", type=int, default=1, help="phantoms per family at the extra count levels")
    ap.add_argument("--extra-realisations", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--stop-relative-width", type=float, default=2.0, help="stop-when-narrow target width/midpoint")
    ap.add_argument("--map-iterations", type=int, default=5)
    ap.add_argument("--ml-iterations", type=int, default=80)
    ap.add_argument("--inner-iterations", type=int, default=10)
    ap.add_argument("--mixing-draws", type=int, default=8, help="unrolled weight draws for prior mixing")
    ap.add_argument("--comparison-realisations", type=int, default=5, help="per phantom")
    ap.add_argument("--bootstrap-replicates", type=int, default=10)
    ap.add_argument("--bayes-samples", type=int, default=8)
    ap.add_argument("--scanner", default="test-2d")
    ap.add_argument("--rings", type=int, default=None, help="keep the first N rings (e.g. test-3d 4: 7 planes)")
    ap.add_argument("--num-xy", type=int, default=None, help="image size in-plane (default: the scanner's)")
    ap.add_argument("--no-unrolled", action="store_true")
    ap.add_argument(
        "--unrolled-weights",
        default="",
        help="unrolled network: a weights folder or a shipped name (fbsem32w, fbsem32x, fbsem32y, fbsem32, fbsem16, dbfb); default: the shipped "
        "default fbsem32w (the documented runs name theirs)",
    )
    ap.add_argument(
        "--seed-base", type=int, default=1000, help="realisation seed of the first phantom (+1 per phantom)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--projector-timing", action="store_true", help="only time forward+back projections on this geometry"
    )
    ap.add_argument("--replot", default="", help="redraw the figure and tables from a results JSON; no compute")
    ap.add_argument("--name", default="confidence_coverage")
    ap.add_argument("--out", default=str(OUT))
    return ap


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it, else as given."""
    try:
        return str(path.resolve().relative_to(WEIGHTS_DIR.parents[1].resolve()))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.replot:
        target = Path(args.replot)
        saved = json.loads(target.read_text())
        args = argparse.Namespace(**{**vars(args), "image_shape": saved.get("image_shape"), **saved["args"]})
        summary = saved.get("summary") or summarise(saved["records"])
        _print(summary, args.alpha)
        _figure(summary, args, target.with_suffix(".png"))
        return 0
    from petuq_sirf.confidence.sets import check_relative_target

    check_relative_target(args.stop_relative_width, "--stop-relative-width")
    if args.quick:
        args.families, args.phantoms_per_family, args.realisations = "brain", 1, 3
        args.comparison_realisations, args.bootstrap_replicates, args.bayes_samples = 1, 3, 3
        args.name = "confidence_coverage_quick"
    torch.set_num_threads(args.threads)
    layout, image = build_geometry(args.scanner, args.rings, args.num_xy)
    if args.projector_timing:
        projector_timing(layout, image, (args.families or "brain").split(",")[0])
        return 0
    args.image_shape = list(image.shape)
    from petuq_sirf.recon.weights import weights_folder

    name = args.unrolled_weights or None
    weights_file = weights_folder("unrolled", name) / "model.safetensors"
    if args.no_unrolled:
        net = posterior = None
    else:
        net, posterior, _ = load_weights("unrolled", name)
    cases = _phantoms(args, image)
    t0, cpu0 = time.perf_counter(), time.process_time()
    records = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{args.name}.partial.json"

    def keep(rec: dict) -> None:  # the records so far survive an interrupted run
        records.append(rec)
        partial.write_text(json.dumps({"args": vars(args), "records": records}))

    for k, (label, ph, rois) in enumerate(cases):
        keep(
            run_phantom(
                label, ph, rois, args, args.counts, args.realisations, net, posterior, layout, args.seed_base + k
            )
        )
    for c in [float(v) for v in args.extra_counts.split(",") if v]:
        seen: dict = {}
        for k, (label, ph, rois) in enumerate(cases):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= args.extra_phantoms:
                keep(
                    run_phantom(
                        label,
                        ph,
                        rois,
                        args,
                        c,
                        args.extra_realisations,
                        net,
                        posterior,
                        layout,
                        args.seed_base + 4000 + k,
                    )
                )
    summary = summarise(records)
    _print(summary, args.alpha)
    meta = {
        "args": vars(args),
        "scanner": layout.scanner.name,
        "image_shape": list(image.shape),
        "voxel_size_mm": list(image.voxel_size_mm),
        "sinogram_shape": list(layout.shape),
        "ring_differences": [layout.segments[0].min_ring_difference, layout.segments[-1].max_ring_difference],
        "unrolled_weights_sha256": None if net is None else _sha256(weights_file),
        "unrolled_weights_file": None if net is None else _relative(weights_file),
        "torch_threads": args.threads,
        "wall_s_total": time.perf_counter() - t0,
        "cpu_s_total": time.process_time() - cpu0,
    }
    (out / f"{args.name}.json").write_text(json.dumps({**meta, "summary": summary, "records": records}))
    _figure(summary, args, out / f"{args.name}.png")
    partial.unlink(missing_ok=True)
    print(f"\nwritten {out / args.name}.json/.png ({meta['wall_s_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
