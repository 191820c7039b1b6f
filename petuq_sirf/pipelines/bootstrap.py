"""The posterior bootstrap of a list-mode acquisition, summarised: what ``petuq bootstrap`` runs.

:func:`bootstrap_acquisition` runs (or resumes) the replicates of an acquisition into a store folder,
summarises them (mean, std, median, central interval; ROI posteriors; coverage and calibration against
the truth when it is known), optionally estimates and removes the full-data MAP's bias by a parametric
bootstrap, and returns a :class:`BootstrapRun`; :meth:`BootstrapRun.write` writes the NIfTI images,
``bootstrap.png`` and ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, make_executor, run_bootstrap, summarise_store
from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.io.atomic import atomic_write_json
from petuq_sirf.io.image_io import write_image
from petuq_sirf.uq.calibration import DEFAULT_LEVELS, coverage, evaluate_uq
from petuq_sirf.uq.roi import equivalent_diameter_mm
from petuq_sirf.viz.bootstrap_figures import bootstrap_figure
from petuq_sirf.viz.labels import activity_units

BIAS_CORRECTIONS = ("none", "parametric")


def body_mask(acq: Acquisition) -> torch.Tensor | None:
    """Voxels inside the object (truth > 0 or any ROI); ``None`` without a truth."""
    if acq.truth is None:
        return None
    mask = acq.truth > 0
    for region in acq.regions.values():
        mask = mask | region.bool()
    return mask


@dataclass
class BootstrapRun:
    """Images (name -> ``(z, y, x)`` array), ``metrics`` (JSON-ready) and the figure of one bootstrap run."""

    images: dict[str, np.ndarray]
    metrics: dict
    figure_images: dict[str, np.ndarray]
    roi: dict | None
    level: float
    title: str
    acquisition: Acquisition = field(repr=False)

    def write(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write the images (``.nii.gz``), ``bootstrap.png`` and ``metrics.json`` into ``out``."""
        out = Path(out)
        acq = self.acquisition
        paths = {
            name: write_image(out / f"{name}.nii.gz", np.asarray(arr, dtype=np.float32), acq.image)
            for name, arr in self.images.items()
        }
        paths["figure"] = bootstrap_figure(
            self.figure_images,
            self.roi,
            out / "bootstrap.png",
            level=self.level,
            title=self.title,
            units=activity_units(acq.info),
            roi_calibrated=(self.metrics.get("roi_conformal") or {}).get("roi"),
        )
        paths["metrics"] = atomic_write_json(out / "metrics.json", self.metrics)
        return paths


def bootstrap_acquisition(
    acq: Acquisition,
    config: BootstrapConfig,
    store_dir: str | os.PathLike,
    backend: str = "embedded",
    scheduler: str = "none",
    workers: int = 2,
    threads_per_worker: int = 1,
    level: float = 0.9,
    bias_correction: str = "none",
    bias_draws: int = 10,
    progress: bool = False,
    input_name: str | None = None,
    manifest_extra: dict | None = None,
    roi_calibration: dict | None = None,
    voxel_calibration: dict | None = None,
) -> BootstrapRun:
    """Run the missing replicates of ``acq`` into ``store_dir`` (resumable) and summarise all of them.

    ``scheduler``: ``none`` (in-process), ``processes``, ``local-dask`` or ``tcp://HOST:PORT``
    (:func:`~petuq_sirf.bootstrap.make_executor`). ``level``: the central interval written as images.
    ``bias_correction="parametric"``: estimate the full-data MAP's bias from MAPs of ``bias_draws``
    Poisson(ybar(MAP)) draws and add ``*_bias_corrected`` images and metrics. ``input_name`` is recorded
    in the metrics, ``manifest_extra`` in the store's manifest. ``roi_calibration`` (from
    :func:`petuq_sirf.pipelines.roi_calibration.load_roi_calibration`) adds ROI-conformal intervals of the
    lesion ROIs (``metrics["roi_conformal"]``); its bootstrap settings must be this run's.
    ``voxel_calibration`` (from :func:`petuq_sirf.pipelines.voxel_calibration.load_voxel_calibration`) adds the
    class-conformal interval images ``lower_<level>_calibrated`` / ``upper_<level>_calibrated``, the per-class
    ``std_calibrated``, the ``voxel_class`` map and ``metrics["voxel_conformal"]``; same settings required.
    """
    if roi_calibration is not None:
        from petuq_sirf.pipelines.roi_calibration import check_settings

        check_settings(roi_calibration, config.replicate_settings(), level)
    if not 0 < level < 1:
        raise ValueError(f"--level must be in (0, 1), got {level}")
    if voxel_calibration is not None:
        from petuq_sirf.pipelines.voxel_calibration import check_settings as check_voxel_settings

        check_voxel_settings(voxel_calibration, config.replicate_settings(), level)
    if workers < 1 or threads_per_worker < 1:
        raise ValueError("--workers and --threads-per-worker must be >= 1")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"unknown bias correction {bias_correction!r}; choose from {', '.join(BIAS_CORRECTIONS)}")
    if bias_correction != "none" and bias_draws < 2:
        raise ValueError(f"--bias-draws must be >= 2, got {bias_draws}")
    out = Path(store_dir)
    problem = BootstrapProblem.from_acquisition(acq, backend)
    t0 = time.perf_counter()
    new = []
    executor = make_executor(scheduler, workers, threads_per_worker)
    try:
        store = run_bootstrap(
            problem,
            config,
            out,
            executor=executor,
            progress=progress,
            on_replicate=lambda r: new.append(r.index),
            manifest_extra=manifest_extra,
        )
    finally:
        executor.close()
    seconds = time.perf_counter() - t0
    indices = list(range(config.num_replicates))
    levels = tuple(sorted(set(DEFAULT_LEVELS) | {round(level, 4)}))
    regions = {k: v.numpy() for k, v in acq.regions.items()}
    truth = acq.truth.numpy() if acq.truth is not None else None
    summary = summarise_store(store, levels=levels, regions=regions, truth=truth, indices=indices)
    for name, post in summary.roi.items():  # the size a reader of a drawn VOI knows (size-grouped calibration)
        if regions[name].any():
            post["equivalent_diameter_mm"] = equivalent_diameter_mm(acq.regions[name], acq.image.voxel_size_mm)
    lo, hi = summary.intervals[round(level, 4)]
    tag = f"{level:.2f}"
    images = {
        "full_data_map": problem.x0.numpy(),
        "mean": summary.mean,
        "std": summary.std,
        "median": summary.median,
        f"lower_{tag}": lo,
        f"upper_{tag}": hi,
    }
    corrected = estimate = None
    if bias_correction == "parametric":
        from petuq_sirf.bootstrap.bias import bias_corrected_summary, estimate_bias

        estimate = estimate_bias(problem, config, bias_draws, folder=out)
        corrected = bias_corrected_summary(summary, estimate, regions, truth)
        clo, chi = corrected.intervals[round(level, 4)]
        images.update(
            {
                "bias_estimate": estimate.bias,
                "mean_bias_corrected": corrected.mean,
                f"lower_{tag}_bias_corrected": clo,
                f"upper_{tag}_bias_corrected": chi,
            }
        )
    metrics: dict = {
        "command": "bootstrap",
        "input": input_name,
        "config": {**config.replicate_settings(), "num_replicates": config.num_replicates},
        "scheduler": scheduler,
        "replicates": summary.count,
        "new_replicates": len(new),
        "seconds": seconds,
        "replicates_per_minute": 60.0 * len(new) / seconds if new else None,
        "prior": store.manifest().get("prior"),
        "mean_std_in_image": float(summary.std.mean()),
        "roi": summary.roi,
    }
    if roi_calibration is not None:
        from petuq_sirf.pipelines.roi_calibration import apply_roi_calibration

        metrics["roi_conformal"] = apply_roi_calibration(metrics, roi_calibration)
    mask = body_mask(acq)
    if voxel_calibration is not None:
        metrics["voxel_conformal"] = _apply_voxel_calibration(
            voxel_calibration, metrics["config"], summary.mean, summary.std, acq, level, images, mask
        )
    if truth is not None:
        t = torch.from_numpy(truth)
        mean_t, std_t = torch.from_numpy(summary.mean), torch.from_numpy(summary.std)
        metrics["coverage_quantile_intervals"] = {
            f"{lv:.2f}": coverage(
                t, torch.from_numpy(summary.intervals[lv][0]), torch.from_numpy(summary.intervals[lv][1]), mask
            )
            for lv in levels
        }
        metrics["gaussian"] = evaluate_uq(t, mean=mean_t, std=std_t, mask=mask, levels=DEFAULT_LEVELS)
    if corrected is not None:
        body = mask if mask is not None else np.ones(estimate.bias.shape, dtype=bool)
        body = np.asarray(body, dtype=bool)
        block: dict = {
            "method": "parametric bootstrap: bias = mean_k MAP(Poisson(ybar(MAP))) - MAP, mean and intervals shifted",
            "draws": estimate.draws,
            "mean_bias_in_body": float(estimate.bias[body].mean()),
            "mean_abs_bias_in_body": float(np.abs(estimate.bias[body]).mean()),
            "roi": corrected.roi,
        }
        if truth is not None:
            from petuq_sirf.uq.figures_of_merit import nrmse

            block["nrmse_full_data_map"] = float(nrmse(torch.from_numpy(problem.x0.numpy()), t, mask))
            block["nrmse_bias_corrected"] = float(nrmse(torch.from_numpy(corrected.mean.astype(np.float32)), t, mask))
            block["coverage_quantile_intervals"] = {
                f"{lv:.2f}": coverage(
                    t,
                    torch.from_numpy(corrected.intervals[lv][0]),
                    torch.from_numpy(corrected.intervals[lv][1]),
                    mask,
                )
                for lv in levels
            }
            block["gaussian"] = evaluate_uq(
                t,
                mean=torch.from_numpy(corrected.mean),
                std=torch.from_numpy(corrected.std),
                mask=mask,
                levels=DEFAULT_LEVELS,
            )
        metrics["bias_corrected"] = block
    fig_images = {
        config.full_data_label(): images["full_data_map"],
        "posterior mean": summary.mean,
        "posterior std": summary.std,
    }
    fig_images[f"{tag} interval width"] = hi - lo
    if voxel_calibration is not None:
        fig_images[f"{tag} calibrated width"] = images[f"upper_{tag}_calibrated"] - images[f"lower_{tag}_calibrated"]
    if corrected is not None:
        fig_images[f"bias-corrected mean (K = {estimate.draws})"] = corrected.mean
    if truth is not None:
        fig_images = {"truth": truth, **fig_images}
    weights = "Exp(1)" if config.weights == "exp" else "Poisson(1)"
    title = f"posterior bootstrap, B = {summary.count}, {weights} weights; {config.describe()}"
    return BootstrapRun(images, metrics, fig_images, summary.roi, level, title, acq)


def _apply_voxel_calibration(
    calibration: dict,
    config: dict,
    mean: np.ndarray,
    std: np.ndarray,
    acq: Acquisition,
    level: float,
    images: dict[str, np.ndarray],
    mask: torch.Tensor | None,
) -> dict:
    """Add the calibrated voxel images to ``images``; the ``metrics["voxel_conformal"]`` block (coverage, width
    and std/RMSE of the calibrated outputs in the body when the truth is known)."""
    from petuq_sirf.pipelines.voxel_calibration import apply_voxel_calibration

    cal = apply_voxel_calibration(calibration, config, mean, std, acq.image.voxel_size_mm, level)
    tag = f"{level:.2f}"
    images[f"lower_{tag}_calibrated"] = cal["lower"]
    images[f"upper_{tag}_calibrated"] = cal["upper"]
    images["std_calibrated"] = cal["std_calibrated"]
    images["voxel_class"] = cal["voxel_class"]
    block: dict = {
        "level": level,
        "calibration_runs": len(calibration["calibration_runs"]),
        "calibration_voxels": calibration["calibration_voxels"],
        "method": "Mondrian split conformal of |truth - mean| / std per voxel class (uq.mondrian); "
        "std_calibrated: per-class std factors (uq.std_scaling)",
    }
    if acq.truth is not None and mask is not None:
        body = mask.numpy().astype(bool)
        t = acq.truth.numpy()
        inside = (t >= cal["lower"]) & (t <= cal["upper"])
        err = mean - t
        block["body_voxels"] = int(body.sum())
        block["coverage"] = float(inside[body].mean())
        block["mean_width_in_body"] = float((cal["upper"] - cal["lower"])[body].mean())
        block["mean_width_over_mean_truth"] = block["mean_width_in_body"] / max(float(t[body].mean()), 1e-300)
        block["std_calibrated_over_rmse"] = float(
            np.sqrt(np.mean(cal["std_calibrated"][body] ** 2) / max(np.mean(err[body] ** 2), 1e-300))
        )
    return block


__all__ = ["BootstrapRun", "body_mask", "bootstrap_acquisition"]
