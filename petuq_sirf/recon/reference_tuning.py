"""Tuned classical references: the NRMSE-optimal OSEM post-filter and MAP-RDP strength.

Every comparison of a learned method must be against the strongest classical reconstruction, tuned on
*calibration* phantoms (never the test truth): OSEM with the post-filter FWHM (and iteration count)
that minimises the mean NRMSE over the calibration cases, and MAP-RDP with the strength
(:meth:`~petuq_sirf.recon.rdp.RelativeDifferencePrior.scaled_for`) that does the same. A grid whose best
point is its last one (or, for the strength, its first one) says only that the optimum lies beyond it, so
the tuners extend such a grid until the optimum is inside (or a few extensions are spent, which the
result records as ``at_grid_edge``). Results are
small JSON documents keyed by ``"<family>@<dose>"`` that a benchmark reuses (:func:`save_tuning`,
:func:`load_tuning`, :func:`lookup`), with a fingerprint of the calibration data and system model
(:func:`tuning_fingerprint`) so that a cache made with another simulator or projector is not reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from petuq_sirf.io.atomic import atomic_write_text
from petuq_sirf.operators.acquisition import AcquisitionModel, subset_views
from petuq_sirf.recon.em import em_update
from petuq_sirf.recon.filters import gaussian_postfilter
from petuq_sirf.recon.map_rdp import map_rdp
from petuq_sirf.recon.rdp import RelativeDifferencePrior

DEFAULT_FWHM_GRID_MM: tuple[float, ...] = (0.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0)
DEFAULT_ITERATION_GRID: tuple[int, ...] = (2, 3, 4, 6, 8, 10)
DEFAULT_STRENGTH_GRID: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
DEFAULT_MAX_EXTENSIONS = 3  # grid extensions beyond an edge optimum (see the tuners)
DEFAULT_MAP_ITERATION_GRID: tuple[int, ...] = (20, 50, 100, 200, 400)  # MAP-RDP iterations, tuned with the strength


@dataclass
class TuningCase:
    """One calibration phantom: its model, prompts ``(M, *model.data_shape)`` (``M`` noise realisations,
    or ``model.data_shape`` for one), truth and mask ``(z, y, x)``."""

    model: AcquisitionModel
    prompts: torch.Tensor
    truth: torch.Tensor
    mask: torch.Tensor


def _nrmse(image: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """NRMSE over the mask, averaged over leading (realisation) dimensions of ``image``."""
    m = mask.to(image.device).bool()
    t = truth.to(image)[m]
    imgs = image.reshape(-1, *image.shape[-3:])
    vals = [float(torch.linalg.norm(x[m] - t) / torch.linalg.norm(t).clamp_min(1e-12)) for x in imgs]
    return sum(vals) / len(vals)


def osem_realisations(
    model: AcquisitionModel,
    prompts: torch.Tensor,
    num_iterations: int,
    num_subsets: int = 8,
    callback=None,
) -> torch.Tensor:
    """OSEM (from ones) of a batch of prompts ``(M, *model.data_shape)`` sharing one model -> ``(M, z, y, x)``.

    Identical to :func:`~petuq_sirf.recon.em.osem` per realisation, vectorised over ``M``
    (e.g. the noise realisations of the frequentist protocol). ``callback(it, x)`` after each pass.
    """
    y = torch.as_tensor(prompts).to(model.device)
    if tuple(y.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"prompts must have shape (M, *{tuple(model.data_shape)}), got {tuple(y.shape)}")
    subsets = [
        (model.subset(i, num_subsets), subset_views(model.data_shape[1], i, num_subsets)) for i in range(num_subsets)
    ]
    if num_subsets == 1:
        subsets = [(model, torch.arange(model.data_shape[1]))]
    sens = [m.sensitivity() for m, _ in subsets]
    x = torch.ones((y.shape[0], *model.image_shape), device=model.device)
    with torch.no_grad():
        for it in range(num_iterations):
            for (m, views), s in zip(subsets, sens):
                x = em_update(m, y[:, :, views.to(y.device)], x, s)
            if callback is not None:
                callback(it, x)
    return x


def _check_cases(cases: Sequence[TuningCase]) -> None:
    if not cases:
        raise ValueError("reference tuning needs at least one calibration case")


def tune_osem_postfilter(
    cases: Sequence[TuningCase],
    fwhm_grid_mm: Iterable[float] = DEFAULT_FWHM_GRID_MM,
    iteration_grid: Iterable[int] = DEFAULT_ITERATION_GRID,
    num_subsets: int = 8,
    max_extensions: int = DEFAULT_MAX_EXTENSIONS,
    in_plane: bool = False,
) -> dict:
    """OSEM iterations and Gaussian post-filter FWHM (mm) minimising the mean NRMSE over ``cases``.

    One OSEM run per case gives every iteration count of the grid (images are kept at those passes). While
    the optimum sits on the grid's largest iteration count or largest (non-zero) FWHM, that axis is extended
    by a factor 1.5, at most ``max_extensions`` times (0 FWHM is a natural lower edge, 1 pass too).
    ``in_plane``: filter in-plane only (no z blur), else isotropically. Returns ``{"iterations", "subsets",
    "fwhm_mm", "in_plane", "nrmse", "grid": {"<it>": {"<fwhm>": nrmse}}, "extensions", "at_grid_edge"}``.
    """
    _check_cases(cases)
    fwhms = sorted({float(f) for f in fwhm_grid_mm})
    iters = sorted({int(i) for i in iteration_grid})
    if not fwhms or not iters or iters[0] < 1 or fwhms[0] < 0:
        raise ValueError("FWHM grid must be >= 0 mm and iteration grid >= 1")
    if max_extensions < 0:
        raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
    kept: list[dict[int, torch.Tensor]] = [{} for _ in cases]
    totals: dict[tuple[int, float], float] = {}
    extensions = 0
    while True:
        for c, case in enumerate(cases):
            if max(kept[c], default=0) < iters[-1]:  # (re)run to the largest count, keeping the grid's passes
                store = kept[c]

                def keep(it: int, x: torch.Tensor, store=store) -> None:
                    if it + 1 in iters:
                        store[it + 1] = x.clone()

                y = case.prompts if case.prompts.dim() > len(case.model.data_shape) else case.prompts[None]
                osem_realisations(case.model, y, iters[-1], num_subsets, callback=keep)
        for i in iters:
            for f in fwhms:
                if (i, f) not in totals:
                    totals[(i, f)] = sum(
                        _nrmse(_postfilter(kept[c][i], f, case.model.voxel_size_mm, in_plane), case.truth, case.mask)
                        for c, case in enumerate(cases)
                    ) / len(cases)
        best = min(totals, key=totals.get)
        on_edge = best[0] == iters[-1] or (best[1] == fwhms[-1] and best[1] > 0)
        if not on_edge or extensions == max_extensions:
            break
        if best[0] == iters[-1]:
            iters.append(max(iters[-1] + 1, round(iters[-1] * 1.5)))
        if best[1] == fwhms[-1] and best[1] > 0:
            fwhms.append(round(fwhms[-1] * 1.5, 3))
        extensions += 1
    return {
        "iterations": best[0],
        "subsets": num_subsets,
        "fwhm_mm": best[1],
        "in_plane": in_plane,
        "nrmse": totals[best],
        "grid": {str(i): {f"{f:g}": totals[(i, f)] for f in fwhms if (i, f) in totals} for i in iters},
        "num_cases": len(cases),
        "extensions": extensions,
        "at_grid_edge": on_edge,
    }


def _postfilter(image: torch.Tensor, fwhm_mm: float, voxel_size_mm, in_plane: bool) -> torch.Tensor:
    if fwhm_mm <= 0:
        return image
    return gaussian_postfilter(image, (0.0, fwhm_mm, fwhm_mm) if in_plane else fwhm_mm, voxel_size_mm)


def tune_map_rdp(
    cases: Sequence[TuningCase],
    strength_grid: Iterable[float] = DEFAULT_STRENGTH_GRID,
    num_iterations: int | Iterable[int] = DEFAULT_MAP_ITERATION_GRID,
    init_iterations: int = 2,
    num_subsets: int = 8,
    max_realisations: int = 2,
    max_extensions: int = DEFAULT_MAX_EXTENSIONS,
) -> dict:
    """MAP-RDP strength (``RelativeDifferencePrior.scaled_for``) and iteration count minimising the mean
    NRMSE over ``cases``.

    Uses the first ``max_realisations`` realisations of each case. Each reconstruction starts from
    ``init_iterations`` OSEM passes (``num_subsets`` subsets), the reference image of the prior's epsilon,
    and runs to the largest of ``num_iterations`` (one count: that count only), recording the image at
    every count of the grid. A run that stops early because no ascent is possible has converged, so
    its final image stands for the larger counts.

    While the best strength is the grid's smallest or largest, the grid is extended beyond it by the ratio
    of its two end points on that side (2 for a one-point grid). While the best count is the grid's
    largest and some run was still ascending there, the counts are extended (x 2). At most
    ``max_extensions`` extensions in all. Returns ``{"strength", "iterations", "nrmse", "grid": {"<s>": best
    nrmse over the counts}, "grid_iterations": {"<s>": {"<it>": nrmse}}, "extensions", "at_grid_edge"}``.
    """
    _check_cases(cases)
    grid = sorted({float(s) for s in strength_grid})
    counts = sorted({int(n) for n in ([num_iterations] if isinstance(num_iterations, int) else num_iterations)})
    if not grid or grid[0] <= 0:
        raise ValueError("RDP strengths must be > 0")
    if not counts or counts[0] < 1:
        raise ValueError(f"MAP-RDP iteration counts must be >= 1, got {counts}")
    if max_extensions < 0:
        raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
    low_ratio = grid[1] / grid[0] if len(grid) > 1 else 2.0
    high_ratio = grid[-1] / grid[-2] if len(grid) > 1 else 2.0
    runs = []  # (case, realisation, its OSEM start image)
    for case in cases:
        ys = case.prompts if case.prompts.dim() > len(case.model.data_shape) else case.prompts[None]
        for y in ys[:max_realisations]:
            runs.append((case, y, osem_realisations(case.model, y[None], init_iterations, num_subsets)[0]))
    totals: dict[tuple[float, int], float] = {}
    ascending: dict[float, bool] = {}  # some run of this strength still ascending at the largest count
    done: dict[float, int] = {}  # largest count evaluated per strength
    extensions = 0
    while True:
        for s in grid:
            if done.get(s, 0) >= counts[-1]:
                continue
            sums = dict.fromkeys(counts, 0.0)
            still = False
            for case, y, x0 in runs:
                prior = RelativeDifferencePrior.scaled_for(case.model.sensitivity(), x0, strength=s)
                images: dict[int, torch.Tensor] = {}

                def keep(it: int, x: torch.Tensor, images=images) -> None:
                    if it + 1 in counts:
                        images[it + 1] = x.clone()

                rec = map_rdp(case.model, y, prior, counts[-1], x0=x0, callback=keep)
                still = still or len(rec.objective) >= counts[-1]
                for n in counts:  # a run that stopped early has converged: its final image stands in
                    sums[n] += _nrmse(images.get(n, rec.image), case.truth, case.mask)
            for n in counts:
                totals[(s, n)] = sums[n] / len(runs)
            done[s], ascending[s] = counts[-1], still
        best_s, best_n = min(totals, key=totals.get)
        s_edge = best_s in (grid[0], grid[-1])
        n_edge = best_n == counts[-1] and ascending[best_s]
        if not (s_edge or n_edge) or extensions == max_extensions:
            break
        if s_edge:
            if best_s == grid[0]:
                grid.insert(0, grid[0] / low_ratio)
            else:
                grid.append(grid[-1] * high_ratio)
        if n_edge:
            counts.append(2 * counts[-1])
            done.clear()  # every strength runs again to the new largest count
        extensions += 1
    per_strength = {s: {n: totals[(s, n)] for n in counts if (s, n) in totals} for s in grid}
    return {
        "strength": best_s,
        "iterations": best_n,
        "init_iterations": init_iterations,
        "subsets": num_subsets,
        "nrmse": totals[(best_s, best_n)],
        "grid": {f"{s:g}": min(v.values()) for s, v in per_strength.items()},
        "grid_iterations": {f"{s:g}": {str(n): v for n, v in per_strength[s].items()} for s in grid},
        "num_cases": len(cases),
        "extensions": extensions,
        "at_grid_edge": s_edge or n_edge,
    }


def osem_reference(model: AcquisitionModel, prompts: torch.Tensor, tuned: Mapping) -> torch.Tensor:
    """OSEM + post-filter with tuned settings (an entry's ``"osem"`` dict); ``prompts`` may carry a leading
    realisation dimension."""
    batch = prompts if prompts.dim() > len(model.data_shape) else prompts[None]
    img = osem_realisations(model, batch, int(tuned["iterations"]), int(tuned["subsets"]))
    img = img if prompts.dim() > len(model.data_shape) else img[0]
    return _postfilter(img, float(tuned["fwhm_mm"]), model.voxel_size_mm, bool(tuned.get("in_plane", False)))


def map_rdp_reference(model: AcquisitionModel, prompts: torch.Tensor, tuned: Mapping) -> torch.Tensor:
    """MAP-RDP with a tuned strength (an entry's ``"map_rdp"`` dict)."""
    x0 = osem_realisations(model, prompts[None], int(tuned["init_iterations"]), int(tuned["subsets"]))[0]
    prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), x0, strength=float(tuned["strength"]))
    return map_rdp(model, prompts, prior, int(tuned["iterations"]), x0=x0).image


def tuning_fingerprint(cases: Sequence[TuningCase]) -> list[list[float]]:
    """Per case ``[sum of the prompts, sum of the truth, sum of G truth, sum of the sensitivity]``.

    Stored with a tuning so that a cached result is reused only for the same calibration data *and*
    the same system model: a change to the simulator or to the projector changes these sums.
    """
    out = []
    with torch.no_grad():
        for c in cases:
            truth = c.truth.to(c.model.device) if hasattr(c.model, "device") else c.truth
            out.append(
                [
                    float(c.prompts.double().sum()),
                    float(c.truth.double().sum()),
                    float(c.model.forward(truth).double().sum()),
                    float(c.model.sensitivity().double().sum()),
                ]
            )
    return out


def fingerprint_matches(stored: Sequence | None, current: Sequence, rtol: float = 1e-6) -> bool:
    """Whether a stored :func:`tuning_fingerprint` equals ``current`` (relative tolerance ``rtol``)."""
    if not stored or len(stored) != len(current):
        return False
    for a, b in zip(stored, current, strict=True):
        if len(a) != len(b) or any(abs(x - y) > rtol * max(abs(x), abs(y), 1e-12) for x, y in zip(a, b, strict=True)):
            return False
    return True


def tuning_key(family: str, dose_fraction: float) -> str:
    return f"{family}@{dose_fraction:g}"


def save_tuning(path: str | Path, results: Mapping[str, Mapping]) -> Path:
    """Write ``results`` as JSON atomically (merging with an existing file's other keys)."""
    path = Path(path)
    merged = dict(load_tuning(path)) if path.is_file() else {}
    merged.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True))  # the usual permissions, not 0600
    return path


def load_tuning(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference tuning file not found: {path}")
    return json.loads(path.read_text())


def lookup(results: Mapping[str, Mapping], family: str, dose_fraction: float) -> Mapping:
    key = tuning_key(family, dose_fraction)
    if key not in results:
        raise ValueError(f"no tuned references for {key}; have {sorted(results)}")
    return results[key]
