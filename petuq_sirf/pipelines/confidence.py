"""Anytime-valid ROI confidence intervals of a list-mode acquisition: what ``petuq confidence`` runs.

:func:`confidence_for_acquisition` splits the prompts into time frames, builds the named predictable
estimators (OSEM, MAP-RDP, the unrolled network, a Bayesian denoiser), runs sequential likelihood mixing
(:func:`petuq_sirf.confidence.sets.confidence_intervals`) and the scan time needed for a target width;
:meth:`ConfidenceRun.write` writes ``metrics.json``, ``config.json`` (the derived settings: frame edges,
solver) and ``bounds.png``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.io.atomic import atomic_write_json


def estimator_names(values: list[str] | None) -> list[str]:
    """Estimator names from repeated / comma-separated values (default ``osem``), checked, duplicates removed."""
    from petuq_sirf.confidence.estimators import ESTIMATORS

    names = [n.strip() for v in (values or ["osem"]) for n in v.split(",") if n.strip()]
    for n in names:
        if n not in ESTIMATORS:
            raise ValueError(f"unknown estimator {n!r}; choose from {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def check_confidence_settings(
    alpha: float,
    frames: int,
    initial_level: float | None = None,
    half_life_s: float | None = None,
    target_width: float | None = None,
    target_relative_width: float | None = None,
    estimators: list[str] | None = None,
) -> tuple[float, list[str]]:
    """``(alpha, estimator names)`` after checking the settings (one-line ``ValueError`` naming the option)."""
    from petuq_sirf.confidence.sets import check_alpha

    alpha = check_alpha(alpha)
    if frames < 2 and initial_level is None:
        raise ValueError("--frames must be >= 2 (frame 1 is a burn-in), or give --initial-level")
    for name, v in (
        ("target-width", target_width),
        ("target-relative-width", target_relative_width),
        ("initial-level", initial_level),
        ("half-life-s", half_life_s),
    ):
        if v is not None and not v > 0:
            raise ValueError(f"--{name} must be > 0")
    if target_relative_width is not None:
        from petuq_sirf.confidence.sets import check_relative_target

        check_relative_target(target_relative_width, "--target-relative-width")
    return alpha, estimator_names(estimators)


@dataclass
class ConfidenceRun:
    """The intervals of one run: ``metrics`` and ``settings`` (JSON-ready), and what the figure shows."""

    metrics: dict
    settings: dict
    result: object = field(repr=False)
    title: str = ""

    def write(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write ``config.json`` (settings), ``metrics.json`` and ``bounds.png`` into ``out``."""
        from petuq_sirf.viz.confidence_figures import confidence_figure

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        res = self.result
        return {
            "config": atomic_write_json(out / "config.json", self.settings),
            "metrics": atomic_write_json(out / "metrics.json", self.metrics),
            "figure": confidence_figure(res.frame_end_s, res.intervals, out / "bounds.png", res.truth_roi, self.title),
        }


def confidence_for_acquisition(
    acq: Acquisition,
    model,
    estimators: list[str] | None = None,
    rois: list[str] | None = None,
    alpha: float = 0.1,
    frames: int = 10,
    initial_level: float | None = None,
    half_life_s: float | None = None,
    target_width: float | None = None,
    target_relative_width: float | None = None,
    weights: str | None = None,
    denoiser_checkpoint: str | None = None,
    ml_iterations: int = 200,
    inner_iterations: int = 15,
    grid_ratio: float = 1.25,
    device: torch.device | str | None = None,
    progress=None,
    input_name: str | None = None,
) -> ConfidenceRun:
    """ROI-mean intervals holding with probability >= 1 - ``alpha`` at every frame at once.

    ``model``: the acquisition model of ``acq`` (any backend). ``rois``: names of ``acq.regions`` (default
    all). Frame 1 is a burn-in unless ``initial_level`` gives a data-free uniform first guess (image
    units). ``target_width`` / ``target_relative_width``: report the scan time needed for that width.
    ``weights``: unrolled weights (default: the shipped network); ``denoiser_checkpoint``: a Bayesian
    denoiser folder. ``progress``: a callable receiving one-line messages, or ``None``.
    """
    from petuq_sirf.confidence.estimators import make_estimator
    from petuq_sirf.confidence.roi_solver import SolverConfig
    from petuq_sirf.confidence.sets import confidence_intervals, frame_listmode, scan_time_needed

    alpha, names = check_confidence_settings(
        alpha, frames, initial_level, half_life_s, target_width, target_relative_width, estimators
    )
    if acq.listmode is None:
        raise ValueError(
            f"{input_name or 'the acquisition'} has no list-mode events (listmode.npz): simulate with --listmode"
        )
    if not acq.regions:
        raise ValueError(f"{input_name or 'the acquisition'} has no ROI masks (regions.npz)")
    device = torch.device(device or "cpu")
    rois = list(rois or acq.regions)
    missing = [r for r in rois if r not in acq.regions]
    if missing:
        raise ValueError(f"unknown ROI {missing[0]!r}; the folder has {', '.join(acq.regions)}")
    masks = {r: acq.regions[r] for r in rois}
    duration = float(acq.info.get("config", {}).get("duration_s") or 0) or None
    framed = frame_listmode(acq.listmode, frames, duration_s=duration, half_life_s=half_life_s)
    built = {}
    for n in names:
        if n == "unrolled":
            from petuq_sirf.recon.weights import load_network

            net, _, _ = load_network("unrolled", weights)
            built[n] = make_estimator(n, net=net.to(device))
        else:
            built[n] = make_estimator(n, checkpoint=denoiser_checkpoint)
    initial = None
    if initial_level is not None:
        sens = model.sensitivity()
        initial = torch.where(sens > 0, torch.full_like(sens, initial_level), torch.zeros_like(sens))
    config = SolverConfig(ml_iterations=ml_iterations, inner_iterations=inner_iterations, grid_ratio=grid_ratio)
    t0 = time.process_time()
    res = confidence_intervals(model, framed, built, masks, alpha, initial, acq.truth, config, progress=progress)
    cpu_s = time.process_time() - t0
    metrics = {"command": "confidence", **res.to_dict(), "cpu_seconds": cpu_s}
    needed: dict = {}
    for n in names:
        for r in rois:
            entry = {}
            if target_width:
                entry["absolute"] = scan_time_needed(res, n, r, target_width)
            if target_relative_width:
                entry["relative"] = scan_time_needed(res, n, r, target_relative_width, relative=True)
            if entry:
                needed.setdefault(n, {})[r] = entry
    if needed:
        metrics["scan_time_needed_s"] = needed
    settings = {
        "input": input_name,
        "estimators": names,
        "rois": rois,
        "alpha": alpha,
        "frames": frames,
        "frame_edges_s": framed.edges_s,
        "initial_level": initial_level,
        "half_life_s": half_life_s,
        "target_width": target_width,
        "target_relative_width": target_relative_width,
        "solver": config.__dict__,
        "device": str(device),
    }
    title = (
        f"{acq.info.get('scanner', '')}: running {100 * (1 - alpha):.0f}% anytime-valid ROI intervals, "
        f"{frames} frames, {int(framed.counts.sum())} prompts" + (" (frame 1 burn-in)" if initial is None else "")
    )
    return ConfidenceRun(metrics, settings, res, title)


__all__ = ["ConfidenceRun", "check_confidence_settings", "confidence_for_acquisition", "estimator_names"]
