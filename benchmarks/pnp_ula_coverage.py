"""Coverage and accuracy of PnP-ULA and the bias-corrected posterior bootstrap on held-out phantoms.

Frequentist protocol at 5 % dose (5·10⁴ expected true counts, test-2d, 20 % randoms, 30 % scatter,
4 mm PSF): ``--phantoms`` test-split phantoms of each ``--families`` family x ``--realisations``
Poisson realisations (list-mode, for the bootstrap). Phantom families come from
``petuq_sirf.simulation.phantom_families`` (the issue-10 families: test seeds never used for
training or calibration; the brain family is the out-of-family one) when it is importable, else from
``--families-from`` (a worktree holding that module), else the project's fixed brain and NEMA
phantoms (never used for training) with the realisations as noise seeds. None of these is the
random-ellipse family the shipped denoiser was trained on.

Methods per data set:

* OSEM + post-filter: in-plane Gaussian filter (no z blur); the iterations (x 8 subsets) and the FWHM
  minimise the NRMSE on ``--calibration`` calibration-split phantoms of the same family and dose
  (``recon.reference_tuning.tune_osem_postfilter``: 2-10 passes, 0-12 mm, each grid extended while its
  last point is the optimum; never on the test truth); ``--osem-iterations N`` fixes the passes (the runs
  before 2026-12-07 evening used 5 and searched the FWHM only); no uncertainty.
* MAP-RDP with the strength that minimises the NRMSE on the same calibration phantoms
  (``recon.reference_tuning.tune_map_rdp``, strengths 0.0005-0.05, extended while an end point is the
  optimum; 20-400 iterations after 2 OSEM passes, tuned with the strength; 20 only before 2026-12-07
  evening); no uncertainty. These two references always run.
* PnP-ADMM over denoiser weight draws (``pnp_admm_posterior``, model spread only).
* PnP-ULA (``pnp_ula``, shipped denoiser, default prior strength).
* Posterior bootstrap (Exp weights, MAP-RDP strength 0.01) and its parametric bias correction.
* ``osem-bootstrap``: the list-mode bootstrap (same Exp weights) of unfiltered OSEM
  (``BootstrapConfig(estimator="osem")``), ``--osem-bootstrap-iterations`` x 8 subsets, every replicate
  reconstructed from a uniform image like the estimator itself: a less biased estimator of lesion ROI
  means, at the price of noisy voxels.
* ``unrolled-bootstrap``: the same list-mode weights (``--replicates``), each weighted sinogram reconstructed
  by the shipped unrolled network (``fbsem32``, or ``--unrolled-weights``; point weights, its mean output, started from 10 MLEM
  iterations as in ``benchmarks/heldout_uq.py``): the spread of the network's output under resampling of
  the data, centred on the network's output for the data itself (the estimator; the replicates' mean is a
  noisier image, since each replicate sees doubly noisy data), for the voxel-class calibration
  (``--voxel-calibration``); the ROI samples are the replicates shifted to that centre.

Per method: NRMSE of the mean over the object, coverage of the Gaussian intervals ``mean +/- z std``
at 0.5-0.95 over the object voxels and the lesion voxels (pooled over all data sets), calibration
error (mean |observed - nominal|), and the ratio mean std / RMSE over the object. For the sampling
methods (PnP-ULA, the bootstrap, the weight draws) also the lesion ROI means: per lesion and data set the
central 90 % interval of the samples' mean uptake in the lesion, and whether it holds the true mean,
pooled into coverage per size group (equivalent diameter < / >= 15 mm, ``uq.roi.size_group``) and hot / cold; with
``--split calibration`` runs on calibration phantoms and ``--merge TEST --roi-calibration CAL`` the
split-conformal ROI intervals (per size group) fitted on the calibration lesions. Prints Markdown
tables and writes ``pnp_ula_coverage.json`` into ``--out``. Timings are CPU seconds
(``time.process_time``) because the machine is shared.

    python benchmarks/pnp_ula_coverage.py --out docs/figures/pnp_ula          # full (>= 20 realisations)
    python benchmarks/pnp_ula_coverage.py --quick --out /tmp/pnp_ula_quick    # a few minutes
    python benchmarks/pnp_ula_coverage.py --split calibration --start 2 --families thorax --out CAL
    python benchmarks/pnp_ula_coverage.py --merge TEST --roi-calibration CAL --out MERGED
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
METHODS = ("admm", "ula", "bootstrap", "osem-bootstrap", "unrolled-bootstrap")
FWHM_GRID_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
RDP_STRENGTH_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # heldout_uq.py grid, extended down for full dose
OSEM_ITERATION_GRID = (2, 3, 4, 5, 6, 8, 10)  # OSEM + filter reference (8 subsets); extended past an edge optimum
# MAP-RDP iterations, tuned with the strength (20 only before 2026-12-07 evening)
RDP_ITERATIONS = (20, 50, 100, 200, 400)
ROI_LEVEL = 0.9
ROI_SIZE_EDGES_MM = (15.0,)  # lesion-size groups (equivalent diameter), as in benchmarks/heldout_uq.py
Z_EDGES = np.logspace(-3.0, 3.0, 601)  # bins of the voxel |error| / std histograms (2.3 % wide)
MIN_STD = 1e-6  # as MondrianStdScaling
MIN_CLASS_VOXELS = 200  # voxel-realisations below which a class uses the pooled calibration
STD_RMSE_BAND = (0.8, 1.25)


def load_families(path: str | None = None):
    """The phantom-family module (``petuq_sirf.simulation.phantom_families``)."""
    from petuq_sirf.simulation import phantom_families

    return phantom_families


def z_value(level: float) -> float:
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


def object_and_lesions(phantom, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    regions = phantom.regions
    obj = regions["object"] if "object" in regions else truth > 0
    if "lesions" in regions:
        les = regions["lesions"]
    else:
        les = torch.zeros_like(obj, dtype=torch.bool)
        for k, v in regions.items():
            if k.startswith(("hot", "cold")):
                les = les | v.bool()
    return obj.bool(), les.bool() & obj.bool()


def in_plane_filter(image: torch.Tensor, fwhm_mm: float, voxel_mm) -> torch.Tensor:
    from petuq_sirf.recon import gaussian_postfilter

    return image if fwhm_mm == 0 else gaussian_postfilter(image, (0.0, fwhm_mm, fwhm_mm), voxel_mm)


class Accumulator:
    """Pooled coverage counts, NRMSE and std/RMSE per method."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def _row(self, name: str) -> dict:
        return self.rows.setdefault(
            name,
            {
                "nrmse": [],
                "ratio": [],
                "seconds": [],
                "obj": np.zeros(len(LEVELS)),
                "les": np.zeros(len(LEVELS)),
                "n_obj": 0,
                "n_les": 0,
            },
        )

    def add(self, name, mean, std, truth, obj, les, seconds, voxel_mm=None) -> None:
        """One data set's estimate ``mean`` (and ``std``, or None); with ``voxel_mm`` also the per-voxel-class
        statistics (:func:`class_stats`) that ``--voxel-calibration`` needs."""
        r = self._row(name)
        err = (mean - truth)[obj]
        r["nrmse"].append(float(err.norm() / truth[obj].norm()))
        r["seconds"].append(seconds)
        if std is None:
            return
        r["ratio"].append(float(std[obj].mean() / err.pow(2).mean().sqrt()))
        for i, lv in enumerate(LEVELS):
            inside = (truth - mean).abs() <= z_value(lv) * std
            r["obj"][i] += float(inside[obj].sum())
            r["les"][i] += float(inside[les].sum())
        r["n_obj"] += int(obj.sum())
        r["n_les"] += int(les.sum())
        if voxel_mm is not None:
            add_class_stats(r.setdefault("classes", {}), class_stats(mean, std, truth, obj, voxel_mm))

    def add_rois(self, name: str, samples: torch.Tensor, truth: torch.Tensor, phantom, voxel_mm) -> None:
        """Lesion ROI-mean intervals (central ``ROI_LEVEL``, sample quantiles) of ``samples (S, z, y, x)``."""
        from petuq_sirf.uq.roi import equivalent_diameter_mm, roi_interval_samples, roi_mean, roi_mean_samples

        rois = self._row(name).setdefault("rois", [])
        for li, lesion in enumerate(getattr(phantom, "lesions", [])):
            msk = phantom.regions.get(f"lesion_{li}")
            if msk is None or not bool(msk.any()):
                continue
            t_roi = float(roi_mean(truth, msk))
            roi_samples = roi_mean_samples(samples, msk)
            lo, hi = roi_interval_samples(roi_samples, ROI_LEVEL)
            centre = float(roi_samples.mean())
            rois.append(
                {
                    "lesion": li,
                    "diameter_mm": float(lesion.diameter_mm),
                    "equivalent_diameter_mm": float(equivalent_diameter_mm(msk, voxel_mm)),
                    "contrast": float(lesion.contrast),
                    "truth": t_roi,
                    "lower": float(lo),
                    "upper": float(hi),
                    "centre": centre,
                    "std": float(roi_samples.std()),
                }
            )

    def table(self) -> tuple[str, dict]:
        head = "| method | NRMSE | std/RMSE | " + " | ".join(f"cov {lv:.2f}" for lv in LEVELS)
        head += " | cal. err | lesion cov 0.90 | CPU s/dataset |"
        lines = [head, "|" + "---|" * (6 + len(LEVELS))]
        out = {}
        for name, r in self.rows.items():
            d = {
                "nrmse": float(np.mean(r["nrmse"])),
                "datasets": len(r["nrmse"]),
                "cpu_s": float(np.mean(r["seconds"])),
                "object_voxels": r["n_obj"],
                "raw": {
                    "nrmse": r["nrmse"],
                    "ratio": r["ratio"],
                    "seconds": r["seconds"],
                    "obj": r["obj"].tolist(),
                    "les": r["les"].tolist(),
                    "n_obj": r["n_obj"],
                    "n_les": r["n_les"],
                    "rois": r.get("rois", []),
                    "classes": {
                        c: {**v, "hist": np.asarray(v["hist"]).tolist()} for c, v in r.get("classes", {}).items()
                    },
                },
            }
            if r.get("rois"):
                d["lesion_roi"] = roi_summary(r["rois"])
            if r["n_obj"]:
                cov = r["obj"] / r["n_obj"]
                d["coverage"] = {f"{lv:.2f}": float(c) for lv, c in zip(LEVELS, cov)}
                d["calibration_error"] = float(np.mean(np.abs(cov - np.array(LEVELS))))
                d["std_over_rmse"] = float(np.mean(r["ratio"]))
                d["lesion_voxels"] = r["n_les"]
                if r["n_les"]:
                    d["lesion_coverage"] = {f"{lv:.2f}": float(c) for lv, c in zip(LEVELS, r["les"] / r["n_les"])}
                cells = [f"{d['std_over_rmse']:.2f}"] + [f"{c:.3f}" for c in cov] + [f"{d['calibration_error']:.3f}"]
                cells.append(f"{d['lesion_coverage']['0.90']:.3f}" if r["n_les"] else "–")
            else:
                cells = ["–"] * (len(LEVELS) + 3)
            lines.append(f"| {name} | {d['nrmse']:.3f} | " + " | ".join(cells) + f" | {d['cpu_s']:.1f} |")
            out[name] = d
        roi_rows = [(name, d["lesion_roi"]) for name, d in out.items() if "lesion_roi" in d]
        if roi_rows:
            groups = list(roi_rows[0][1]["groups"])
            lines += [
                "",
                f"Lesion ROI means, {ROI_LEVEL:.0%} sample-quantile intervals (coverage over lesions x realisations; "
                "n in brackets):",
                "",
                "| method | all | " + " | ".join(groups) + " | median rel. bias | median rel. width |",
                "|" + "---|" * (4 + len(groups)),
            ]
            for name, rs in roi_rows:
                cells = [f"{rs['coverage']:.2f} ({rs['count']})"]
                cells += [
                    f"{rs['groups'][g]['coverage']:.2f} ({rs['groups'][g]['count']})"
                    if rs["groups"][g]["count"]
                    else "–"
                    for g in groups
                ]
                cells += [f"{rs['median_rel_bias']:+.2f}", f"{rs['median_rel_width']:.2f}"]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines), out


def class_stats(mean, std, truth, obj, voxel_mm) -> dict[str, dict]:
    """Per voxel class (``uq.mondrian.voxel_classes`` of the estimate ``mean``, never of the truth) over the
    object voxels: count ``n``, ``err2`` = sum (mean - truth)^2, ``var`` = sum std^2, the sums ``std_sum`` and
    ``truth_sum`` (for widths) and the histogram ``hist`` of |mean - truth| / std over ``Z_EDGES`` - enough to
    fit and evaluate per-class std scaling and Mondrian conformal intervals on pooled data sets without
    keeping the images."""
    from petuq_sirf.uq.mondrian import voxel_classes

    cls = voxel_classes(mean, voxel_mm)[obj]
    err = (mean - truth)[obj].double()
    t = torch.as_tensor(truth).expand(mean.shape)[obj].double()
    s = std[obj].double().clamp_min(MIN_STD)
    z = (err.abs() / s).clamp(float(Z_EDGES[0]), float(Z_EDGES[-1])).numpy()
    out = {}
    for c in torch.unique(cls).tolist():
        m = cls == c
        out[str(c)] = {
            "n": int(m.sum()),
            "err2": float(err[m].pow(2).sum()),
            "var": float(s[m].pow(2).sum()),
            "std_sum": float(s[m].sum()),
            "truth_sum": float(t[m].sum()),
            "hist": np.histogram(z[m.numpy()], Z_EDGES)[0],
        }
    return out


def add_class_stats(into: dict[str, dict], stats: dict[str, dict]) -> None:
    """Pool :func:`class_stats` ``stats`` into ``into`` (in place)."""
    for c, v in stats.items():
        if c not in into:
            into[c] = {"hist": np.zeros(len(Z_EDGES) - 1, dtype=np.int64)}
        for k in ("n", "err2", "var", "std_sum", "truth_sum"):
            if k in v:
                into[c][k] = into[c].get(k, 0) + v[k]
        into[c]["hist"] = into[c]["hist"] + np.asarray(v["hist"], dtype=np.int64)


def hist_cdf(hist, x: float) -> float:
    """Fraction of the histogrammed |z| that are <= ``x`` (log-linear inside a bin)."""
    cum = np.concatenate([[0], np.cumsum(hist)])
    lx = math.log(min(max(x, Z_EDGES[0]), Z_EDGES[-1]))
    return float(np.interp(lx, np.log(Z_EDGES), cum) / cum[-1])


def hist_conformal_quantile(hist, level: float) -> float:
    """The split-conformal quantile of the histogrammed scores: the ``ceil((n + 1) level)``-th smallest
    (inf when there are too few scores), read log-linearly inside its bin."""
    cum = np.concatenate([[0], np.cumsum(hist)])
    n = int(cum[-1])
    k = math.ceil((n + 1) * level)
    if k > n:
        return math.inf
    i = int(np.searchsorted(cum, k))  # first edge index with cum >= k
    lo, hi = cum[i - 1], cum[i]
    frac = (k - lo) / max(hi - lo, 1)
    return float(math.exp(math.log(Z_EDGES[i - 1]) + frac * (math.log(Z_EDGES[i]) - math.log(Z_EDGES[i - 1]))))


def voxel_calibration(calibration: dict[str, dict], test: dict[str, dict]) -> dict:
    """Per-class voxel calibration fitted on pooled calibration class statistics, evaluated on test ones.

    Variants: ``raw`` (``mean +/- z std``); ``global std scaling`` (one factor, sqrt(sum err^2 / sum std^2));
    ``Mondrian std scaling`` (that factor per voxel class, ``uq.std_scaling.MondrianStdScaling``);
    ``Mondrian conformal`` (per class and level the split-conformal quantile of |err| / std). Classes with
    fewer than ``MIN_CLASS_VOXELS`` calibration voxel-realisations use the pooled factor / quantile. Per
    variant: object coverage at ``LEVELS`` and its calibration error, the lowest per-class coverage at 0.90,
    and std/RMSE per class on the test voxels (RMS of the scaled std over RMS error, bias included; for the
    conformal variant the std implied by the 90 % quantile) - range and the fraction of object voxels whose
    class lies in ``STD_RMSE_BAND``; the mean width of the 90 % intervals over the mean true activity."""
    from petuq_sirf.uq.std_scaling import MondrianStdScaling

    if not calibration or not test:
        raise ValueError("voxel calibration needs calibration and test class statistics")
    scaler = MondrianStdScaling(min_class_size=MIN_CLASS_VOXELS, min_std=MIN_STD).fit_sums(
        {c: v["err2"] for c, v in calibration.items()},
        {c: v["var"] for c, v in calibration.items()},
        {c: v["n"] for c, v in calibration.items()},
    )
    pooled = np.sum([np.asarray(v["hist"]) for v in calibration.values()], axis=0)

    def conformal_q(c: str, level: float) -> float:
        v = calibration.get(c)
        hist = v["hist"] if v is not None and v["n"] >= MIN_CLASS_VOXELS else pooled
        return hist_conformal_quantile(hist, level)

    z90 = z_value(0.9)
    half_width = {  # variant -> (class, level) -> interval half-width in units of the class's std
        "raw": lambda c, lv: z_value(lv),
        "global std scaling": lambda c, lv: z_value(lv) * scaler.global_factor,
        "Mondrian std scaling": lambda c, lv: z_value(lv) * scaler.factors.get(int(c), scaler.global_factor),
        "Mondrian conformal": conformal_q,
    }
    n_total = sum(v["n"] for v in test.values())
    big = {c: v for c, v in test.items() if v["n"] >= MIN_CLASS_VOXELS}  # classes reported one by one
    widths = all("std_sum" in v for v in test.values())  # runs written before the sums were stored: no widths
    out: dict = {
        "calibration_voxels": sum(v["n"] for v in calibration.values()),
        "test_voxels": n_total,
        "std_scaling": scaler.to_dict(),
        "variants": {},
    }
    for variant, hw in half_width.items():
        cov = [sum(v["n"] * hist_cdf(v["hist"], hw(c, lv)) for c, v in test.items()) / n_total for lv in LEVELS]
        class_cov = {c: hist_cdf(v["hist"], hw(c, 0.9)) for c, v in big.items()}
        ratios = {c: hw(c, 0.9) / z90 * math.sqrt(v["var"] / max(v["err2"], 1e-300)) for c, v in big.items()}
        in_band = sum(big[c]["n"] for c, r in ratios.items() if STD_RMSE_BAND[0] <= r <= STD_RMSE_BAND[1])
        scaled_var = sum((hw(c, 0.9) / z90) ** 2 * v["var"] for c, v in test.items())
        width = sum(2 * hw(c, 0.9) * v["std_sum"] for c, v in test.items()) if widths else math.nan
        out["variants"][variant] = {
            "coverage": {f"{lv:.2f}": c for lv, c in zip(LEVELS, cov)},
            "calibration_error": float(np.mean(np.abs(np.array(cov) - np.array(LEVELS)))),
            "min_class_coverage_0.90": min(class_cov.values(), default=math.nan),
            "class_coverage_0.90": class_cov,
            "class_fraction": {c: v["n"] / n_total for c, v in big.items()},
            "std_over_rmse_object": math.sqrt(scaled_var / sum(v["err2"] for v in test.values())),
            "std_over_rmse_per_class": ratios,
            "fraction_in_band": in_band / n_total,
            "width_0.90_over_uptake": width / sum(v["truth_sum"] for v in test.values()) if widths else None,
        }
    return out


def roi_size_groups() -> list[str]:
    """The size-group labels of :func:`roi_size_group`, smallest first."""
    return [roi_size_group({"equivalent_diameter_mm": d}) for d in (0.0, *ROI_SIZE_EDGES_MM)]


def roi_size_group(roi: dict) -> str:
    """Size group of an ROI row (``uq.roi.size_group`` of its equivalent diameter)."""
    from petuq_sirf.uq.roi import size_group

    return size_group(roi["equivalent_diameter_mm"], ROI_SIZE_EDGES_MM)


def roi_centre(roi: dict) -> float:
    """The samples' mean of an ROI row; rows written before it was stored (the JSON of 2026-12-07) give it
    as ``truth (1 + rel_bias)``."""
    return roi["centre"] if "centre" in roi else roi["truth"] * (1.0 + roi["rel_bias"])


def roi_summary(rois: list[dict]) -> dict:
    """Pooled lesion ROI coverage, per size group (equivalent diameter) and hot / cold, with the median bias
    and width relative to the true mean (all derived from the rows' ``truth``, ``lower``, ``upper``, centre)."""

    def cov(rows: list[dict]) -> dict:
        n = len(rows)
        hits = [x["lower"] <= x["truth"] <= x["upper"] for x in rows]
        return {"count": n, "coverage": float(np.mean(hits)) if n else float("nan")}

    groups = {g: [x for x in rois if roi_size_group(x) == g] for g in roi_size_groups()}
    groups["hot"] = [x for x in rois if x["contrast"] > 1]
    groups["cold"] = [x for x in rois if x["contrast"] < 1]
    return {
        "level": ROI_LEVEL,
        **cov(rois),
        "groups": {k: cov(v) for k, v in groups.items()},
        "median_rel_bias": float(np.median([roi_centre(x) / x["truth"] - 1.0 for x in rois])),
        "median_rel_width": float(np.median([(x["upper"] - x["lower"]) / x["truth"] for x in rois])),
    }


def _diag(diag: list[dict]) -> dict:
    if not diag:  # PnP-ULA not run
        return {}
    return {
        "rhat_max_median": float(np.median([d["rhat_max"] for d in diag])),
        "ess_min_median": float(np.median([d["ess_min"] for d in diag])),
        "ess_image_mean_median": float(np.median([d["ess_of_image_mean"] for d in diag])),
    }


def _raw_from_summary(d: dict, rep: dict, family: str) -> dict:
    """Counts of a run that stored only fractions (one phantom per run): object voxels recomputed."""
    n = d["datasets"]
    if "object_voxels" in d:
        n_obj = d["object_voxels"]
    else:
        from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

        fam = load_families()
        image = ImageGeometry.for_layout(SinogramLayout(get_scanner("test-2d")))
        settings = rep["settings"]
        if settings["phantoms"] != 1:
            raise ValueError("cannot merge a multi-phantom run without raw counts")
        ph = fam.family_phantoms(family, image, "test", 1, start=settings["start"])[0]
        n_obj = n * int(ph.regions["object"].sum())
    cov = [d["coverage"][f"{lv:.2f}"] for lv in LEVELS] if "coverage" in d else [0.0] * len(LEVELS)
    les = [d["lesion_coverage"][f"{lv:.2f}"] for lv in LEVELS] if d.get("lesion_coverage") else [0.0] * len(LEVELS)
    n_les = d.get("lesion_voxels", 0)
    has_std = "coverage" in d
    return {
        "nrmse": [d["nrmse"]] * n,
        "ratio": [d["std_over_rmse"]] * n if has_std else [],
        "seconds": [d["cpu_s"]] * n,
        "obj": [c * n_obj for c in cov] if has_std else [0.0] * len(LEVELS),
        "les": [c * n_les for c in les],
        "n_obj": n_obj if has_std else 0,
        "n_les": n_les if has_std else 0,
    }


def _roi_arrays(rois: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Truth, centre (samples' mean, :func:`roi_centre`), spread (half the sample interval) and size group of
    ROI rows."""
    t = torch.tensor([x["truth"] for x in rois], dtype=torch.float64)
    c = torch.tensor([roi_centre(x) for x in rois], dtype=torch.float64)
    s = torch.tensor([(x["upper"] - x["lower"]) / 2 for x in rois], dtype=torch.float64)
    return t, c, s, [roi_size_group(x) for x in rois]


def roi_conformal(calibration: list[dict], test: list[dict], min_group_size: int = 10) -> dict:
    """Split-conformal ROI intervals ``centre -/+ q half-width`` (``q`` per size group, fitted on the
    calibration lesions' scores ``|truth - centre| / half-width``), and their coverage on ``test``."""
    from petuq_sirf.uq.roi import RoiConformal

    if not calibration or not test:
        raise ValueError("ROI conformal calibration needs calibration and test lesions")
    cal = RoiConformal(levels=(ROI_LEVEL,), min_group_size=min_group_size).fit(*_roi_arrays(calibration))
    t, c, s, g = _roi_arrays(test)
    lo, hi = cal.interval(c, s, ROI_LEVEL, groups=g)
    hit = ((t >= lo) & (t <= hi)).double()
    out = {
        "level": ROI_LEVEL,
        "calibration_lesions": len(calibration),
        "count": len(test),
        "coverage": float(hit.mean()),
        "median_rel_width": float(((hi - lo) / t).median()),
        "conformal": cal.to_dict(),
        "groups": {},
    }
    for name in sorted(set(g)):
        idx = torch.tensor([i for i, v in enumerate(g) if v == name])
        out["groups"][name] = {
            "count": int(idx.numel()),
            "coverage": float(hit[idx].mean()),
            "median_rel_width": float(((hi - lo) / t)[idx].median()),
        }
    return out


def _families(report: dict) -> list[str]:
    """The family sections of a report (not ``settings``, whose ``methods`` is the command-line string)."""
    return [k for k, v in report.items() if isinstance(v, dict) and isinstance(v.get("methods"), dict)]


def _report_rois(folders: list[str], method: str) -> list[dict]:
    rows: list[dict] = []
    for f in folders:
        rep = json.loads((Path(f) / "pnp_ula_coverage.json").read_text())
        if rep.get("settings", {}).get("split") != "calibration":
            raise SystemExit(f"pnp_ula_coverage: error: --roi-calibration {f}: not a run with --split calibration")
        for family in _families(rep):
            if method in rep[family]["methods"]:
                rows += rep[family]["methods"][method].get("raw", {}).get("rois", [])
    return rows


def _report_classes(folders: list[str], method: str) -> dict[str, dict]:
    """The pooled voxel-class statistics of ``method`` over runs with ``--split calibration``."""
    pooled: dict[str, dict] = {}
    for f in folders:
        rep = json.loads((Path(f) / "pnp_ula_coverage.json").read_text())
        if rep.get("settings", {}).get("split") != "calibration":
            raise SystemExit(f"pnp_ula_coverage: error: --voxel-calibration {f}: not a run with --split calibration")
        for family in _families(rep):
            if method in rep[family]["methods"]:
                add_class_stats(pooled, rep[family]["methods"][method].get("raw", {}).get("classes", {}))
    return pooled


def calibration_summary(folders: list[str]) -> str:
    """``"<families> calibration phantoms, <n> data sets"`` of the calibration runs in ``folders``."""
    families, datasets = set(), 0
    for f in folders:
        rep = json.loads((Path(f) / "pnp_ula_coverage.json").read_text())
        for family in _families(rep):
            families.add(family)
            datasets += max((m.get("datasets", 0) for m in rep[family]["methods"].values()), default=0)
    return f"{' + '.join(sorted(families))} calibration phantoms, {datasets} data sets"


def voxel_class_figure(rows: dict, title: str, path: Path) -> Path | None:
    """Bars: coverage at 90 % per voxel class (classes with >= ``MIN_CLASS_VOXELS`` test voxel-realisations,
    labelled activity / edge / distance bin and their share of the object) for each variant, one panel per
    method with a voxel calibration; the nominal level as a line."""
    from petuq_sirf.uq.mondrian import VoxelClassSpec
    from petuq_sirf.viz.common import save_figure, subplots

    methods = [(name, d["voxel_calibration"]) for name, d in rows.items() if "voxel_calibration" in d]
    if not methods:
        return None
    spec = VoxelClassSpec()
    fig, axes = subplots(len(methods), 1, figsize=(11, 3.2 * len(methods)), squeeze=False)
    for ax, (name, vc) in zip(axes[:, 0], methods, strict=True):
        variants = vc["variants"]
        frac = variants["raw"]["class_fraction"]
        classes = sorted(frac, key=lambda c: -frac[c])
        width = 0.8 / len(variants)
        for i, (variant, v) in enumerate(variants.items()):
            cov = [v["class_coverage_0.90"][c] for c in classes]
            ax.bar(np.arange(len(classes)) + (i - (len(variants) - 1) / 2) * width, cov, width, label=variant)
        ax.axhline(0.9, color="k", lw=1, ls="--", label="nominal 0.90")
        labels = [
            ("outside" if int(c) == spec.num_classes else "a{} e{} d{}".format(*spec.bins(int(c)))) + f"\n{frac[c]:.0%}"
            for c in classes
        ]
        ax.set_xticks(np.arange(len(classes)), labels, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("coverage at 90 %")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, ncol=5, loc="lower left")
    axes[-1, 0].set_xlabel(
        "voxel class of the estimate: activity bin a (< 0.6, 0.6-1.6, > 1.6 x median), edge bin e (< 0.15, "
        "0.15-0.4, > 0.4 x median),\ndistance bin d (< / >= 8 mm to the outline); below: the class's share of "
        "the object's voxels",
        fontsize=8,
    )
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def print_voxel_calibration(rows: dict, folders: list[str]) -> None:
    """Fit per-class voxel calibrations on the runs in ``folders`` and print them on the merged ``rows``."""
    print(f"\nVoxel calibration by class (classes from the estimate), calibrated on {', '.join(folders)}:\n")
    band = f"{STD_RMSE_BAND[0]}-{STD_RMSE_BAND[1]}"
    print(
        "| method | variant | object 0.50 / 0.90 / 0.95 | cal. err | lowest class 0.90 | std/RMSE object | "
        f"std/RMSE per class min-max | voxels in {band} | width 0.90 / uptake |"
    )
    print("|" + "---|" * 9)
    for name, d in rows.items():
        cal, test = _report_classes(folders, name), d["raw"].get("classes", {})
        if not cal or not test:
            continue
        vc = voxel_calibration(cal, test)
        d["voxel_calibration"] = vc
        for variant, v in vc["variants"].items():
            c = v["coverage"]
            ratios = list(v["std_over_rmse_per_class"].values())
            print(
                f"| {name} | {variant} | {c['0.50']:.3f} / {c['0.90']:.3f} / {c['0.95']:.3f} | "
                f"{v['calibration_error']:.3f} | {v['min_class_coverage_0.90']:.3f} | {v['std_over_rmse_object']:.2f} | "
                + (f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "–")
                + f" | {v['fraction_in_band']:.2f} | "
                + ("–" if v["width_0.90_over_uptake"] is None else f"{v['width_0.90_over_uptake']:.2f}")
                + " |"
            )


def merge(
    folders: list[str], out: Path, roi_calibration: list[str] | None = None, voxel_calibration: list[str] | None = None
) -> None:
    """Pool the raw counts of split runs (same settings) and print the tables; with ``roi_calibration``
    (folders of runs on calibration phantoms) also the ROI-conformal lesion intervals, with
    ``voxel_calibration`` the per-class voxel calibrations (:func:`voxel_calibration`)."""
    reports = [json.loads((Path(f) / "pnp_ula_coverage.json").read_text()) for f in folders]
    merged: dict = {"source": reports[0]["source"], "merged_from": folders}
    families = _families(reports[0])
    for family in families:
        acc = Accumulator()
        diag = []
        fwhm = set()
        for rep in reports:
            if family not in rep:
                continue
            fwhm.add(rep[family]["postfilter_fwhm_mm"])
            diag.append(rep[family]["ula_diagnostics"])
            for name, d in rep[family]["methods"].items():
                raw = d["raw"] if "raw" in d else _raw_from_summary(d, rep, family)
                r = acc._row(name)
                r["nrmse"] += raw["nrmse"]
                r["ratio"] += raw["ratio"]
                r["seconds"] += raw["seconds"]
                r["obj"] = r["obj"] + np.asarray(raw["obj"])
                r["les"] = r["les"] + np.asarray(raw["les"])
                r["n_obj"] += raw["n_obj"]
                r["n_les"] += raw["n_les"]
                if raw.get("rois"):
                    r.setdefault("rois", []).extend(raw["rois"])
                if raw.get("classes"):
                    add_class_stats(r.setdefault("classes", {}), raw["classes"])
        table, rows = acc.table()
        n = max(len(r["nrmse"]) for r in acc.rows.values())
        print(f"\n### {family}: {n} data sets (merged from {len(folders)} runs); post-filter FWHM {sorted(fwhm)} mm\n")
        print(table)
        keys = diag[0].keys() if diag else []
        merged[family] = {
            "postfilter_fwhm_mm": sorted(fwhm),
            "map_rdp_per_run": [rep[family].get("map_rdp") for rep in reports if family in rep],
            "methods": rows,
            "ula_diagnostics_per_run": diag,
            "ula_diagnostics": {k: float(np.median([d[k] for d in diag])) for k in keys},
        }
        print(f"PnP-ULA diagnostics (median over runs of per-run medians): {merged[family]['ula_diagnostics']}")
        if roi_calibration:
            print(f"\nROI-conformal lesion intervals at {ROI_LEVEL:.0%}, calibrated on {', '.join(roi_calibration)}:\n")
            sizes = roi_size_groups()
            print("(per size group: coverage (n; median width / true uptake))\n")
            print(
                f"| method | calibration lesions | q ({' / '.join(sizes)} / pooled) | coverage (n) | "
                + " | ".join(sizes)
                + " | median rel. width |"
            )
            print("|" + "---|" * (5 + len(sizes)))
            for name, d in rows.items():
                cal_rows = _report_rois(roi_calibration, name)
                test_rows = d["raw"].get("rois", [])
                if not cal_rows or not test_rows:
                    continue
                rc = roi_conformal(cal_rows, test_rows)
                d["lesion_roi_conformal"] = rc
                qs = rc["conformal"]["quantiles"][f"{ROI_LEVEL:.2f}"]
                q_cells = " / ".join(f"{qs[k]:.1f}" if k in qs else "–" for k in sizes)
                q_cells += f" / {rc['conformal']['global_quantiles'][f'{ROI_LEVEL:.2f}']:.1f}"
                grp = [rc["groups"].get(k) for k in sizes]
                g_cells = [
                    f"{x['coverage']:.2f} ({x['count']}; w {x['median_rel_width']:.2f})" if x else "–" for x in grp
                ]
                print(
                    f"| {name} | {rc['calibration_lesions']} | {q_cells} | {rc['coverage']:.2f} ({rc['count']}) | "
                    + " | ".join(g_cells)
                    + f" | {rc['median_rel_width']:.2f} |"
                )
        if voxel_calibration:
            print_voxel_calibration(rows, voxel_calibration)
            counts = reports[0].get("settings", {}).get("counts")
            out.mkdir(parents=True, exist_ok=True)
            figure = voxel_class_figure(
                rows,
                f"{family}: 90 % intervals per voxel class, {n} data sets"
                + (f", {counts:g} expected trues" if counts else "")
                + f"; calibrated on {calibration_summary(voxel_calibration)}",
                out / f"voxel_classes_{family}.png",
            )
            if figure:
                print(f"figure written to {figure}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pnp_ula_coverage.json").write_text(json.dumps(merged, indent=2))
    print(f"\nmerged JSON written to {out / 'pnp_ula_coverage.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="brain,thorax", help="phantom families (with the family module)")
    p.add_argument("--phantoms", type=int, default=2, help="test phantoms per family")
    p.add_argument("--realisations", type=int, default=5, help="noise realisations per phantom")
    p.add_argument("--calibration", type=int, default=2, help="calibration phantoms for the post-filter search")
    p.add_argument("--counts", type=float, default=5e4)
    p.add_argument(
        "--osem-iterations",
        type=int,
        default=None,
        help="OSEM passes (8 subsets) of the OSEM + filter reference; default: tuned with the FWHM on the calibration "
        "phantoms (2-10, extended while the optimum is the last); 5 gives the OSEM row of the runs before 2026-12-07 evening",
    )
    p.add_argument("--ula-chains", type=int, default=4)
    p.add_argument("--ula-burn-in", type=int, default=600)
    p.add_argument("--ula-kept", type=int, default=25, help="kept states per chain")
    p.add_argument("--ula-thinning", type=int, default=8)
    p.add_argument(
        "--ula-support",
        type=int,
        default=1,
        help="1: PnP-ULA holds voxels outside the mu-map body (dilated 2 voxels) at zero; 0: whole field of view",
    )
    p.add_argument(
        "--ula-lipschitz",
        choices=("support", "local"),
        default="support",
        help="PnP-ULA step bound: 'support' (likelihood curvature bounded on all x >= 0, the guarantee) or 'local' "
        "(curvature at the initial image: larger steps, no guarantee)",
    )
    p.add_argument("--admm-draws", type=int, default=4)
    p.add_argument("--admm-iterations", type=int, default=60)
    p.add_argument("--replicates", type=int, default=10, help="posterior-bootstrap replicates B")
    p.add_argument(
        "--osem-bootstrap-iterations",
        type=int,
        default=5,
        help="OSEM passes (8 subsets) of the osem-bootstrap (5: the narrowest ROI-conformal intervals of 5 / 10 / 20 "
        "in a cross-fit on thorax calibration phantoms)",
    )
    p.add_argument("--bias-draws", type=int, default=5, help="parametric draws K of the bias estimate")
    p.add_argument("--start", type=int, default=0, help="index of the first test phantom (to split a run)")
    p.add_argument("--merge", nargs="+", default=None, help="merge the JSON of split runs (folders) and print")
    p.add_argument(
        "--roi-calibration",
        nargs="+",
        default=None,
        help="with --merge: folders of runs with --split calibration; fits ROI-conformal lesion intervals on their "
        "lesions and reports their coverage on the merged runs",
    )
    p.add_argument(
        "--voxel-calibration",
        nargs="+",
        default=None,
        help="with --merge: folders of runs with --split calibration; fits per-voxel-class std scaling and Mondrian "
        "conformal intervals on their voxels and reports them on the merged runs",
    )
    p.add_argument(
        "--split",
        choices=("test", "calibration"),
        default="test",
        help="phantom split to evaluate ('calibration' for the lesions of --roi-calibration)",
    )
    p.add_argument("--quick", action="store_true", help="1 family x 1 phantom x 3 realisations, short chains")
    p.add_argument(
        "--weights",
        default=None,
        help="PnP denoiser weights folder or shipped name (default: the shipped pnp-admm denoiser); it is the prior "
        "of PnP-ULA and the network of the PnP-ADMM weight draws",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma list of the methods to run (of {', '.join(METHODS)}), or 'none' for the references only "
        "(OSEM + filter and tuned MAP-RDP always run)",
    )
    p.add_argument(
        "--unrolled-weights",
        default="fbsem32",
        help="with --methods unrolled-bootstrap: a shipped unrolled network's name or a weights folder (rows are "
        "named after its last path component)",
    )
    p.add_argument("--scanner", default="test-2d", help="test-2d (2D) or test-3d (a small 3D case, with --rings)")
    p.add_argument("--rings", type=int, default=None, help="rings of the scanner (test-3d: 4 gives 7 image planes)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/figures/pnp_ula")
    args = p.parse_args()
    if args.quick:
        args.families, args.phantoms, args.realisations, args.calibration = "brain", 1, 3, 1
        args.ula_burn_in, args.ula_kept, args.ula_chains = 300, 10, 2
        args.admm_draws, args.admm_iterations, args.replicates, args.bias_draws = 3, 40, 6, 3
    torch.set_num_threads(args.threads)
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    if methods == {"none"}:
        methods = set()
    elif not methods or methods - set(METHODS):
        raise SystemExit(f"pnp_ula_coverage: error: --methods: choose from {', '.join(METHODS)}, got {args.methods!r}")
    if args.merge:
        merge(args.merge, Path(args.out), args.roi_calibration, args.voxel_calibration)
        return

    from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, run_replicate
    from petuq_sirf.bootstrap.bias import estimate_bias
    from petuq_sirf.recon import osem
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm_posterior
    from petuq_sirf.recon.pnp_ula import PnPULAConfig, body_support, pnp_ula
    from petuq_sirf.recon.reference_tuning import TuningCase, map_rdp_reference, tune_map_rdp, tune_osem_postfilter
    from petuq_sirf.recon.weights import load_network as load_weights
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation import SimulationConfig, simulate
    from petuq_sirf.simulation.phantoms import brain_phantom, nema_iec_phantom

    scanner = get_scanner(args.scanner)
    if args.rings:
        scanner = scanner.with_(name=f"{args.scanner}-{args.rings}rings", num_rings=args.rings)
    layout = SinogramLayout(scanner)
    image = ImageGeometry.for_layout(layout)
    vox = image.voxel_size_mm
    try:
        net, posterior, net_info = load_weights("pnp-admm", args.weights)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"pnp_ula_coverage: error: --weights: {exc}") from None
    fam = load_families()
    cases: list[tuple[str, object, list[object]]] = []  # (family, test phantoms, calibration phantoms)
    if fam is not None:
        source = f"family module {fam.__file__}"
        for family in args.families.split(","):
            test = fam.family_phantoms(family, image, args.split, args.phantoms, start=args.start)
            calib = fam.family_phantoms(family, image, "calibration", args.calibration)
            cases.append((family, test, calib))
    else:
        source = "project phantoms (brain_phantom, nema_iec_phantom); post-filter searched on the other one"
        brain, nema = brain_phantom(image), nema_iec_phantom(image)
        cases = [("brain", [brain], [nema]), ("nema", [nema], [brain])][: 1 if args.quick else 2]
    sim_cfg = {"true_counts": args.counts}
    ula_cfg = PnPULAConfig(
        num_samples=args.ula_kept,
        burn_in=args.ula_burn_in,
        thinning=args.ula_thinning,
        num_chains=args.ula_chains,
        lipschitz=args.ula_lipschitz,
    )
    boot_cfg = BootstrapConfig(num_replicates=args.replicates, num_iterations=20, full_data_iterations=60)
    osem_cfg = BootstrapConfig(
        num_replicates=args.replicates, estimator="osem", num_iterations=args.osem_bootstrap_iterations
    )

    def bootstrap(sim, cfg: BootstrapConfig) -> tuple[BootstrapProblem, np.ndarray]:
        """The list-mode bootstrap of one data set: the prepared problem and the replicates ``(B, z, y, x)``."""
        problem = BootstrapProblem.from_acquisition(sim)
        problem.prepare(cfg)
        return problem, np.stack([run_replicate(problem, cfg, b).image for b in range(cfg.num_replicates)])

    def unrolled_bootstrap(sim, model, cfg: BootstrapConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The unrolled network's mean output on the data ``(z, y, x)`` and on each Exp-weighted sinogram
        ``(B, z, y, x)``; ``model`` is the data set's acquisition model."""
        from petuq_sirf.bootstrap.replicate import replicate_draws, weighted_data
        from petuq_sirf.recon.reference_tuning import osem_realisations

        problem = BootstrapProblem.from_acquisition(sim)  # for its list-mode events
        draws = [weighted_data(problem, replicate_draws(problem, cfg, b)[0])[0] for b in range(cfg.num_replicates)]
        ys = torch.stack([torch.as_tensor(sim.prompts).to(draws[0]), *draws])
        x0 = osem_realisations(model, ys, 10, 1)
        with torch.no_grad():
            out = torch.stack([unrolled_net(model, ys[b], x0[b])[0] for b in range(len(ys))]).float()
        return out[0], out[1:]

    if "unrolled-bootstrap" in methods:
        unrolled_net = load_weights("unrolled", args.unrolled_weights)[0]
        unrolled_name = f"unrolled ({Path(args.unrolled_weights).name}) bootstrap"

    report: dict = {
        "source": source,
        "settings": vars(args),
        "ula": {k: str(v) for k, v in vars(ula_cfg).items()},
        "denoiser": {"families": net_info.get("families", ["random ellipses"]), "command": net_info.get("command")},
    }
    print(f"phantoms from: {source}")
    t_all = time.process_time()
    for family, test, calib in cases:
        # --- NRMSE-optimal post-filter on calibration phantoms (same family and dose)
        tuning_cases = []
        for j, ph in enumerate(calib):
            sim = simulate(ph, layout, SimulationConfig(seed=90_000 + j, **sim_cfg))
            obj, _ = object_and_lesions(ph, sim.truth)
            tuning_cases.append(TuningCase(sim.acquisition_model(), sim.prompts, sim.truth, obj))
        if args.osem_iterations is None:  # iterations and in-plane FWHM, grids extended past an edge optimum
            osem_tuned = tune_osem_postfilter(tuning_cases, FWHM_GRID_MM, OSEM_ITERATION_GRID, in_plane=True)
        else:  # fixed iterations, FWHM on the fixed grid (the runs before 2026-12-07 evening)
            osem_tuned = tune_osem_postfilter(
                tuning_cases, FWHM_GRID_MM, (args.osem_iterations,), in_plane=True, max_extensions=0
            )
        fwhm, osem_its = osem_tuned["fwhm_mm"], osem_tuned["iterations"]
        rdp = tune_map_rdp(tuning_cases, strength_grid=RDP_STRENGTH_GRID, num_iterations=RDP_ITERATIONS)
        rdp_name = f"MAP-RDP, strength {rdp['strength']:g}"
        osem_name = f"OSEM + {fwhm:g} mm filter" + ("" if args.osem_iterations is not None else f" ({osem_its} it)")
        edge = [k for k, t in (("OSEM", osem_tuned), ("MAP-RDP", rdp)) if t.get("at_grid_edge")]
        print(
            f"[{family}] OSEM {osem_its} iterations, post-filter FWHM {fwhm:g} mm, RDP strength {rdp['strength']:g} "
            f"(NRMSE-optimal on {len(calib)} calibration phantoms"
            + (f"; still at the edge of the extended grid: {', '.join(edge)})" if edge else ")")
        )
        acc = Accumulator()
        diag = []

        def family_report(rows: dict, fwhm=fwhm, rdp=rdp, diag=diag, osem_tuned=osem_tuned) -> dict:
            return {
                "postfilter_fwhm_mm": fwhm,
                "osem": osem_tuned,
                "map_rdp": rdp,
                "methods": rows,
                "ula_diagnostics": _diag(diag),
            }

        for pi, ph in enumerate(test):
            for r in range(args.realisations):
                data_seed = 1000 * (pi + args.start) + r  # the noise realisation (and its OSEM-bootstrap weights)
                sim = simulate(ph, layout, SimulationConfig(seed=data_seed, listmode=True, **sim_cfg))
                model = sim.acquisition_model()
                y, truth = sim.prompts, sim.truth
                obj, les = object_and_lesions(ph, truth)
                t0 = time.process_time()
                rec = in_plane_filter(osem(model, y, osem_its, 8).image, fwhm, image.voxel_size_mm)
                acc.add(osem_name, rec, None, truth, obj, les, time.process_time() - t0)
                t0 = time.process_time()
                acc.add(rdp_name, map_rdp_reference(model, y, rdp), None, truth, obj, les, time.process_time() - t0)
                if "admm" in methods:
                    t0 = time.process_time()
                    post = pnp_admm_posterior(
                        model,
                        y,
                        net,
                        posterior,
                        args.admm_draws,
                        PnPADMMConfig(num_iterations=args.admm_iterations),
                        seed=r,
                    )
                    s = post.summary
                    acc.add_rois("PnP-ADMM weight draws (model spread only)", s.samples, truth, ph, image.voxel_size_mm)
                    acc.add(
                        "PnP-ADMM weight draws (model spread only)",
                        s.mean,
                        s.std,
                        truth,
                        obj,
                        les,
                        time.process_time() - t0,
                        image.voxel_size_mm,
                    )
                if "ula" in methods:
                    t0 = time.process_time()
                    support = body_support(sim.mu_per_cm) if args.ula_support else None
                    ula = pnp_ula(model, y, net, PnPULAConfig(**{**vars(ula_cfg), "seed": r}), support=support)
                    acc.add(
                        "PnP-ULA", ula.summary.mean, ula.summary.std, truth, obj, les, time.process_time() - t0, vox
                    )
                    acc.add_rois("PnP-ULA", ula.summary.samples, truth, ph, image.voxel_size_mm)
                    diag.append(ula.settings["diagnostics"])
                if "bootstrap" in methods:
                    t0 = time.process_time()
                    problem, reps = bootstrap(sim, boot_cfg)
                    b_mean = torch.from_numpy(reps.mean(0))
                    b_std = torch.from_numpy(reps.std(0, ddof=1))
                    t_boot = time.process_time() - t0
                    acc.add("posterior bootstrap", b_mean, b_std, truth, obj, les, t_boot, vox)
                    acc.add_rois("posterior bootstrap", torch.from_numpy(reps).float(), truth, ph, image.voxel_size_mm)
                    t0 = time.process_time()
                    est = estimate_bias(problem, boot_cfg, args.bias_draws)
                    c_mean = torch.from_numpy(np.maximum(reps.mean(0) - est.bias, 0)).float()
                    c_std = torch.from_numpy(np.sqrt(reps.var(0, ddof=1) + est.mc_variance)).float()
                    acc.add(
                        "posterior bootstrap, bias-corrected",
                        c_mean,
                        c_std,
                        truth,
                        obj,
                        les,
                        t_boot + time.process_time() - t0,
                        vox,
                    )
                    shifted = torch.from_numpy(np.maximum(reps - est.bias, 0)).float()
                    acc.add_rois("posterior bootstrap, bias-corrected", shifted, truth, ph, image.voxel_size_mm)
                if "unrolled-bootstrap" in methods:
                    t0 = time.process_time()
                    full, reps_t = unrolled_bootstrap(sim, model, replace(osem_cfg, seed=data_seed))
                    acc.add(unrolled_name, full, reps_t.std(0), truth, obj, les, time.process_time() - t0, vox)
                    acc.add_rois(unrolled_name, reps_t - reps_t.mean(0) + full, truth, ph, image.voxel_size_mm)
                if "osem-bootstrap" in methods:
                    t0 = time.process_time()
                    _, reps_np = bootstrap(sim, replace(osem_cfg, seed=data_seed))
                    reps_t = torch.from_numpy(reps_np).float()
                    name = f"OSEM bootstrap ({args.osem_bootstrap_iterations} it, no filter)"
                    acc.add(name, reps_t.mean(0), reps_t.std(0), truth, obj, les, time.process_time() - t0, vox)
                    acc.add_rois(name, reps_t, truth, ph, image.voxel_size_mm)
                _, partial = acc.table()  # written after every data set: an interrupted run keeps its results
                report[family] = family_report(partial)
                out_dir = Path(args.out)
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "pnp_ula_coverage.json").write_text(json.dumps(report, indent=2))
                ula_note = (
                    f"ULA R-hat max {diag[-1]['rhat_max']:.2f}, ESS min {diag[-1]['ess_min']:.1f}; " if diag else ""
                )
                print(
                    f"[{family}] phantom {pi} realisation {r}: {ula_note}CPU so far {time.process_time() - t_all:.0f} s",
                    flush=True,
                )
        table, rows = acc.table()
        print(f"\n### {family}: {len(test)} test phantoms x {args.realisations} realisations, {args.counts:g} counts\n")
        print(table)
        report[family] = family_report(rows)
        print(f"PnP-ULA diagnostics (medians over data sets): {report[family]['ula_diagnostics']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pnp_ula_coverage.json").write_text(json.dumps(report, indent=2))
    print(f"\nJSON written to {out / 'pnp_ula_coverage.json'}; total CPU {time.process_time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
