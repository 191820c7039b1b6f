"""List-mode data to an acquisition ready to reconstruct: bin, randoms, attenuation, normalisation, scatter.

:func:`acquisition_from_listmode` is what ``petuq listmode`` and ``examples/mmr_listmode_pipeline.py``
do, as one library call: read a Siemens mMR PETLINK file (``.l.hdr``) or a PETSIRD file, histogram
prompts and delayeds into the reconstruction layout, estimate randoms from the delayeds (ML singles),
attenuation factors from a mu-map (1/cm), normalisation from an efficiency sinogram, and scatter
either from a file or by :func:`tail_fitted_scatter`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.io.image_io import read_image
from petuq_sirf.io.interfile import read_projdata
from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.io.mmr_listmode import (
    DecodeStats,
    bin_mmr_listmode,
    is_mmr_header,
    make_layout,
    read_mmr_header,
    read_mmr_listmode,
)
from petuq_sirf.io.petsird_io import PetsirdInfo, read_petsird
from petuq_sirf.operators.acquisition import AcquisitionModel
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.recon.em import osem
from petuq_sirf.scanner.geometry import ScannerGeometry, get_scanner
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout
from petuq_sirf.simulation.attenuation import attenuation_factors
from petuq_sirf.simulation.randoms import estimate_randoms
from petuq_sirf.simulation.scatter import scatter_sinogram

TAIL_ATTENUATION = 0.999  # bins whose attenuation factor exceeds this miss the object: the scatter tails


def tail_fitted_scatter(
    model: AcquisitionModel,
    layout: SinogramLayout,
    prompts: torch.Tensor,
    randoms: torch.Tensor,
    attenuation: torch.Tensor,
    efficiency: torch.Tensor,
    iterations: int = 2,
    fallback_fraction: float = 0.3,
) -> tuple[torch.Tensor, str]:
    """Scatter in counts ``(sinograms, views, tangential)``: a smooth shape scaled on the tails.

    The shape is the blurred attenuated emission of a short OSEM of ``prompts`` (``iterations`` x 4
    subsets on ``model``, whose additive term should be the randoms), scaled so that on the tails (bins
    whose LOR misses the object, attenuation factor > 0.999) it explains the prompts above the randoms.
    When under 1 % of the bins are tails (the object fills the field of view), the shape is scaled to
    ``fallback_fraction`` of the net trues instead. Returns ``(scatter, "tail fit" | "assumed fraction")``.
    """
    if not 0 <= fallback_fraction < 1:
        raise ValueError(f"the fallback scatter fraction must be in [0, 1), got {fallback_fraction}")
    x0 = osem(model, prompts, iterations, min(4, model.data_shape[1])).image
    emission = attenuation * model.geometric(x0)
    shape = scatter_sinogram(layout, emission.cpu(), 0.3, efficiency.cpu()).to(prompts.device)
    tails = attenuation > TAIL_ATTENUATION
    if tails.float().mean() < 0.01:
        net = float((prompts - randoms).clamp_min(0).sum())
        return shape * (fallback_fraction * net / max(float(shape.sum()), 1e-12)), "assumed fraction"
    excess = float((prompts - randoms)[tails].sum())
    denom = float(shape[tails].sum())
    return shape * (max(excess, 0.0) / denom if denom > 0 else 0.0), "tail fit"


def _sinogram(path: str | os.PathLike, shape: tuple[int, int, int], what: str) -> torch.Tensor:
    arr = read_projdata(path).array
    if arr.shape != shape:
        raise ValueError(f"{what} {path} has shape {arr.shape}, but the list-mode layout is {shape}")
    return torch.from_numpy(arr)


def acquisition_from_listmode(
    path: str | os.PathLike,
    scanner: str | ScannerGeometry | None = None,
    span: int | None = None,
    max_ring_difference: int | None = None,
    view_mashing: int = 1,
    start_s: float | None = None,
    stop_s: float | None = None,
    mu_map: str | os.PathLike | None = None,
    norm: str | os.PathLike | None = None,
    scatter: str | os.PathLike | None = None,
    tail_fit_scatter: bool = False,
    scatter_fallback_fraction: float = 0.3,
    image_size: int = 128,
    voxel_size_mm: float = 4.0,
    keep_events: bool = True,
    progress: bool = True,
    frame: int | None = None,
) -> Acquisition:
    """An :class:`~petuq_sirf.io.acquisition_folder.Acquisition` from a list-mode file (see the module docstring).

    Args:
        path: a Siemens PETLINK 32-bit header (``.l.hdr``, STIR's ``.l.hdr.STIR``) or a PETSIRD file.
        scanner: a named scanner or a geometry (needed for PETSIRD layouts with span/mashing; optional for mMR headers).
        span, max_ring_difference, view_mashing: the reconstruction layout (mMR default span 11, MRD 60).
        start_s, stop_s: keep events in ``[start_s, stop_s)`` seconds.
        mu_map: attenuation map in 1/cm (Interfile or NIfTI); sets the image grid.
        norm: detector efficiencies per bin (Interfile ``.hs`` in the output layout).
        scatter: a scatter estimate in counts (``.hs`` in the output layout), or
        tail_fit_scatter: estimate scatter with :func:`tail_fitted_scatter` (needs ``mu_map``).
        image_size, voxel_size_mm: the image grid without a mu-map (voxels in x/y, mm).
        keep_events: keep the events in the acquisition (bootstrap needs them; large); without them an mMR
            file is streamed into the two sinograms.
        frame: keep the events of the header's time frame ``frame`` (1-based; mMR headers only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list-mode file {path} does not exist")
    if scatter is not None and tail_fit_scatter:
        raise ValueError("give a scatter file or ask for the tail fit, not both")
    if tail_fit_scatter and mu_map is None:
        raise ValueError("the scatter tail fit needs a mu-map (the tails are the LORs that miss the object)")
    if frame is not None and (start_s is not None or stop_s is not None):
        raise ValueError("give either --frame or --start-s/--stop-s, not both")
    geometry = get_scanner(scanner) if isinstance(scanner, str) else scanner
    start = None if start_s is None else 1000.0 * start_s
    stop = None if stop_s is None else 1000.0 * stop_s
    info: dict = {"source": str(path)}
    if is_mmr_header(path):
        header = read_mmr_header(path, scanner=geometry)
        if frame is not None:
            start, stop = header.frame_ms(frame)
        is_mmr = header.scanner.name == "Siemens mMR"
        span = span if span is not None else (11 if is_mmr else header.span)
        max_rd = max_ring_difference
        if max_rd is None:
            max_rd = min(60, header.max_ring_difference) if is_mmr else header.max_ring_difference
        layout = make_layout(header.scanner, span, max_rd, view_mashing, header.num_projections)
        stats = DecodeStats()
        if keep_events:
            events = read_mmr_listmode(header, layout, start, stop, progress=progress, stats=stats)
        else:  # stream: only the two sinograms are kept
            prompts, delayeds = bin_mmr_listmode(header, layout, start, stop, progress=progress, stats=stats)
            events = None
            if stats.prompts + stats.delayeds == 0:
                raise ValueError(f"{path}: no events in the selected time interval")
            first_ms, last_ms = stats.first_time_ms, stats.last_time_ms
        info.update(format="Siemens PETLINK 32-bit", time_tags=stats.time_tags, dropped_events=stats.dropped)
    else:
        if frame is not None:
            raise ValueError("--frame needs a list-mode header with time frames (Siemens .l.hdr)")
        if geometry is None and (span or max_ring_difference or view_mashing != 1):
            raise ValueError("give --scanner with --span/--max-ring-difference/--view-mashing for PETSIRD input")
        layout = None
        if geometry is not None:
            layout = make_layout(geometry, span or 1, max_ring_difference, view_mashing)
        pinfo = PetsirdInfo(geometry)
        events = read_petsird(path, layout, pinfo)
        layout = layout or SinogramLayout(pinfo.scanner)
        if start is not None or stop is not None:
            events = events.select_time(start or 0.0, stop if stop is not None else float("inf"))
        info.update(format="PETSIRD")
    if events is not None:
        if len(events) == 0:
            raise ValueError(f"{path}: no events in the selected time interval")
        prompts, delayeds = events.histogram(prompts=True), events.histogram(prompts=False)
        first_ms, last_ms = float(events.times_ms.min()), float(events.times_ms.max())
    return acquisition_from_sinograms(
        layout,
        prompts,
        delayeds,
        info,
        events=events if keep_events else None,
        first_event_ms=first_ms,
        last_event_ms=last_ms,
        mu_map=mu_map,
        norm=norm,
        scatter=scatter,
        tail_fit_scatter=tail_fit_scatter,
        scatter_fallback_fraction=scatter_fallback_fraction,
        image_size=image_size,
        voxel_size_mm=voxel_size_mm,
        progress=progress,
    )


def acquisition_from_sinograms(
    layout: SinogramLayout,
    prompts: torch.Tensor,
    delayeds: torch.Tensor,
    info: dict,
    *,
    events: ListModeEvents | None = None,
    first_event_ms: float | None = None,
    last_event_ms: float | None = None,
    mu_map: str | os.PathLike | None = None,
    norm: str | os.PathLike | None = None,
    scatter: str | os.PathLike | None = None,
    tail_fit_scatter: bool = False,
    scatter_fallback_fraction: float = 0.3,
    image_size: int = 128,
    voxel_size_mm: float = 4.0,
    progress: bool = False,
) -> Acquisition:
    """An :class:`Acquisition` from binned prompts and delayeds ``(sinograms, views, tangential)`` (counts).

    Randoms are estimated from the delayeds (ML singles); attenuation factors come from ``mu_map``
    (1/cm, which also sets the image grid; otherwise ``image_size`` x ``image_size`` voxels of
    ``voxel_size_mm``), efficiencies from ``norm``, scatter from ``scatter`` or the tail fit.
    ``info`` (the decoder's record) is completed with the totals; ``events`` are kept when given.
    """
    if tail_fit_scatter and mu_map is None:
        raise ValueError("the scatter tail fit needs a mu-map (the tails are the LORs that miss the object)")
    randoms = estimate_randoms(layout, delayeds, progress=progress) if delayeds.sum() > 0 else torch.zeros(layout.shape)
    if mu_map is not None:
        mu_array, image = read_image(mu_map, layout.scanner)  # Interfile: STIR axial origin
        mu = torch.as_tensor(mu_array, dtype=torch.float32)
        att = attenuation_factors(RayTracingProjector(layout, image), mu)
    else:
        mu = None
        image = ImageGeometry.for_layout(layout, image_size, voxel_size_mm)
        att = torch.ones(layout.shape)
    eff = _sinogram(norm, layout.shape, "normalisation") if norm else torch.ones(layout.shape)
    scatter_est = _sinogram(scatter, layout.shape, "scatter") if scatter else None
    if tail_fit_scatter:
        base = make_acquisition_model("embedded", layout, image, eff * att, randoms)
        scatter_est, method = tail_fitted_scatter(
            base, layout, prompts, randoms, att, eff, fallback_fraction=scatter_fallback_fraction
        )
        info.update(scatter_method=method, scatter_estimate=float(scatter_est.sum()))
    additive = randoms + (scatter_est if scatter_est is not None else 0)
    info.update(
        layout=layout.describe(),
        prompts=float(prompts.sum()),
        delayeds=float(delayeds.sum()),
        randoms_estimate=float(randoms.sum()),
        first_event_ms=first_event_ms,
        last_event_ms=last_event_ms,
    )
    return Acquisition(
        layout=layout,
        image=image,
        prompts=prompts,
        multiplicative=eff * att,
        additive=additive,
        delayeds=delayeds,
        randoms_estimate=randoms,
        scatter=scatter_est,
        mu_per_cm=mu,
        listmode=events,
        info=info,
    )


__all__ = ["TAIL_ATTENUATION", "acquisition_from_listmode", "tail_fitted_scatter"]
