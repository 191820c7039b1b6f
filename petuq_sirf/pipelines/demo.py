"""``petuq demo`` as a library call: a small end-to-end run on the embedded backend.

:func:`run_demo` simulates a NEMA IEC-like phantom on the small 2D scanner ``test-2d`` (attenuation,
normalisation, randoms from delayeds, scatter, Poisson noise), reconstructs it with OSEM (also
post-filtered, 6 mm FWHM) and MAP-RDP, and (unless ``denoiser=False``) trains a small Pyro Bayesian denoiser
on simulated random phantoms and applies it to an OSEM image of the same acquisition
(:func:`~petuq_sirf.pipelines.denoiser_demo.run_denoiser_demo`). It writes the acquisition folder, images
and figures into ``out`` and returns the metrics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from petuq_sirf.io.acquisition_folder import save_acquisition
from petuq_sirf.io.image_io import write_image
from petuq_sirf.recon import RelativeDifferencePrior, gaussian_postfilter, map_rdp, osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate
from petuq_sirf.uq.figures_of_merit import image_metrics
from petuq_sirf.viz.images import image_panel
from petuq_sirf.viz.labels import reconstruction_title

POSTFILTER_FWHM_MM = 6.0
OSEM_SUBSETS = 8
BETA_STRENGTH = 0.01


def run_demo(
    out: str | os.PathLike,
    counts: float = 3e5,
    seed: int = 0,
    quick: bool = False,
    denoiser: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict:
    """Run the demo into the folder ``out``; return its metrics (JSON-ready).

    ``counts``: expected true coincidences; ``quick``: 3 OSEM iterations and 10 MAP-RDP iterations (instead
    of 10 and 40) and a shorter denoiser training. Writes ``acquisition/``, ``truth`` / ``osem`` /
    ``osem_filtered`` / ``map_rdp`` NIfTI images, ``reconstructions.png`` and, with the denoiser,
    ``bayesian_denoiser/`` and ``training_cache/``. The metrics hold the acquisition summary, the figures of
    merit of each reconstruction, the denoiser's coverage and ``runtime_s``.
    """
    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    phantom = nema_iec_phantom(image)
    sim = simulate(phantom, layout, SimulationConfig(true_counts=counts, seed=seed), device=device)
    save_acquisition(sim, out / "acquisition")
    model = sim.acquisition_model(device)
    iters = 3 if quick else 10
    map_iters = 10 if quick else 40
    rec_osem = osem(model, sim.prompts, iters, OSEM_SUBSETS, progress=progress).image
    osem_filtered = gaussian_postfilter(rec_osem, POSTFILTER_FWHM_MM, image.voxel_size_mm)
    prior = RelativeDifferencePrior.scaled_for(model.sensitivity(), rec_osem, strength=BETA_STRENGTH)
    rec_map = map_rdp(model, sim.prompts, prior, map_iters, x0=rec_osem, progress=progress).image
    images = {
        "truth": sim.truth,
        "osem": rec_osem.cpu(),
        "osem_filtered": osem_filtered.cpu(),
        "map_rdp": rec_map.cpu(),
    }
    for name, img in images.items():
        write_image(out / f"{name}.nii.gz", img.numpy(), image)
    metrics: dict = {"command": "demo", "acquisition": sim.summary(), "reconstruction": {}}
    for name in ("osem", "osem_filtered", "map_rdp"):
        metrics["reconstruction"][name] = image_metrics(images[name], sim.truth, sim.regions, sim.contrast)
    titles = {
        "truth": "truth",
        "osem": reconstruction_title("osem", iters, OSEM_SUBSETS),
        "osem_filtered": reconstruction_title("osem", iters, OSEM_SUBSETS, postfilter_fwhm_mm=POSTFILTER_FWHM_MM),
        "map_rdp": reconstruction_title("map-rdp", map_iters, beta_strength=BETA_STRENGTH) + f" (from OSEM {iters} it)",
    }
    shown = {titles[k]: v for k, v in images.items()}
    image_panel(
        shown,
        out / "reconstructions.png",
        shared_scale=tuple(shown),
        title=f"petuq demo: NEMA IEC-like phantom, {counts:.3g} expected trues",
    )
    if denoiser:
        from petuq_sirf.pipelines.denoiser_demo import run_denoiser_demo

        metrics["bayesian_denoiser"] = run_denoiser_demo(
            sim, out / "bayesian_denoiser", seed=seed, quick=quick, cache_dir=out / "training_cache"
        )
    metrics["runtime_s"] = time.perf_counter() - t0
    return metrics


__all__ = ["run_demo"]
