"""Bayesian denoising of an image file and the coverage protocol of trained denoisers: what
``petuq denoise`` and ``petuq evaluate-uq`` run.

* :func:`denoise_image` — posterior mean, std and interval images of a trained denoiser (plus the
  split-conformal interval when the model stores scales for the level), and errors / coverage against a
  true image when one is given.
* :func:`evaluate_denoisers` — the frequentist protocol per model (a held-out phantom simulated many times
  at one dose, reconstructed like the training data, denoised), with calibration curves, z-score
  histograms and panels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.bayes.checkpoint import checkpoint_info, load_denoiser
from petuq_sirf.bayes.evaluation import frequentist_protocol
from petuq_sirf.bayes.grid import check_denoiser_grid
from petuq_sirf.bayes.training_data import DenoisingDataConfig, geometry_for
from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.simulation.phantoms import make_phantom
from petuq_sirf.uq import calibration as cal
from petuq_sirf.uq.figures_of_merit import nrmse, psnr
from petuq_sirf.viz.uq_figures import calibration_curves, method_panels, z_histograms


@dataclass
class DenoisingInput:
    """A trained denoiser, its record and an image on its grid, checked before anything is written."""

    model_folder: Path
    model: object
    record: dict
    array: np.ndarray
    geometry: object

    @classmethod
    def load(
        cls, model_folder: str | os.PathLike, image_path: str | os.PathLike, force: bool = False
    ) -> DenoisingInput:
        """Load the model and the image; refuse an image off the training grid (naming both) unless ``force``."""
        if not Path(image_path).is_file():
            raise FileNotFoundError(f"input image {image_path} not found")
        model = load_denoiser(model_folder)
        record = checkpoint_info(model_folder)
        array, geometry = read_image(image_path)
        check_denoiser_grid(record, geometry, force=force, what=f"--input {image_path}")
        return cls(Path(model_folder), model, record, array, geometry)


def denoise_image(
    inp: DenoisingInput,
    out: str | os.PathLike,
    samples: int = 32,
    level: float = 0.9,
    seed: int = 0,
    truth_path: str | os.PathLike | None = None,
) -> tuple[dict[str, Path], dict | None]:
    """Denoise ``inp``'s image (z slices as a batch) and write the maps into ``out``.

    Returns ``(paths, metrics)``: the written images by name and, with ``truth_path``, the NRMSE / PSNR
    of the mean and of the input and the coverage (raw and conformal) over ``truth > 0`` (else ``None``).
    The split-conformal interval is written when the model stores scales for ``level``.
    """
    scales = {float(k): v for k, v in inp.record.get("extra", {}).get("conformal_scales", {}).items()}
    array, geometry = inp.array, inp.geometry
    out = Path(out)
    noisy = torch.from_numpy(np.ascontiguousarray(array)).float()
    post = inp.model.predict(noisy, samples, seed)
    paths = post.write(out, geometry, level=level)
    mean, std = post.predictive_mean, post.total_std
    level_key = min(scales, key=lambda k: abs(k - level)) if scales else None
    if level_key is not None and abs(level_key - level) < 1e-6:
        lo, hi = cal.gaussian_interval(mean, std, level, scales[level_key])
        pct = int(round(level * 100))
        paths[f"lower{pct}_conformal"] = write_image(out / f"lower{pct}_conformal.nii.gz", lo.numpy(), geometry)
        paths[f"upper{pct}_conformal"] = write_image(out / f"upper{pct}_conformal.nii.gz", hi.numpy(), geometry)
    if truth_path is None:
        return paths, None
    truth_array, _ = read_image(truth_path)
    if truth_array.shape != array.shape:
        raise ValueError(f"truth shape {truth_array.shape} differs from the input shape {array.shape}")
    truth = torch.from_numpy(np.ascontiguousarray(truth_array)).float()
    mask = truth > 0
    metrics = {
        "command": "denoise",
        "model": str(inp.model_folder),
        "nrmse": nrmse(mean, truth, mask),
        "nrmse_input": nrmse(noisy, truth, mask),
        "psnr_db": psnr(mean, truth, mask),
        "psnr_input_db": psnr(noisy, truth, mask),
        "uq": cal.evaluate_uq(truth, mean=mean, std=std, mask=mask),
    }
    if scales:
        metrics["uq_conformal"] = cal.evaluate_uq(truth, mean=mean, std=std, mask=mask, scale=scales)
    return paths, metrics


def training_data_config(folder: str | os.PathLike) -> DenoisingDataConfig:
    """The training-data settings recorded in a denoiser model folder."""
    extra = checkpoint_info(folder).get("extra", {})
    if "data_config" not in extra:
        raise ValueError(f"{folder}: the checkpoint does not record its training data settings")
    d = dict(extra["data_config"])
    d["dose_fractions"] = tuple(d["dose_fractions"])
    return DenoisingDataConfig(**d)


def evaluate_denoisers(
    model_folders: list[str],
    out: str | os.PathLike,
    phantom: str = "nema",
    dose: float = 0.05,
    realisations: int = 20,
    samples: int = 32,
    seed: int = 1234,
    report=None,
) -> dict:
    """The coverage protocol for each model; writes the figures into ``out`` and returns the metrics.

    ``report``: a callable receiving one summary line per model (or ``None``).
    """
    if realisations < 2:
        raise ValueError(f"--realisations must be >= 2, got {realisations}")
    out = Path(out)
    results, panels, curves, zs = {}, {}, {}, {}
    for folder in model_folders:
        model = load_denoiser(folder)
        data_config = training_data_config(folder)
        _, image = geometry_for(data_config.scanner)
        truth = make_phantom(phantom, image, seed=seed)
        scales = checkpoint_info(folder)["extra"].get("conformal_scales")
        scales = {float(k): v for k, v in scales.items()} if scales else None
        name = model.config.method
        while name in results:
            name += "'"
        result, maps = frequentist_protocol(model, truth, data_config, dose, realisations, samples, scales, seed)
        result["model"] = str(folder)
        results[name] = result
        zs[name] = maps.pop("z")
        panels[name] = maps
        curves[name] = result["coverage"]
        if "conformal" in result:
            curves[f"{name} (conformal)"] = result["conformal"]["coverage"]
        if report is not None:
            report(
                f"{name}: coverage@90 {result['coverage']['0.90']:.3f}"
                + (
                    f" -> {result['conformal']['coverage']['0.90']:.3f} after conformal"
                    if "conformal" in result
                    else ""
                )
                + f", calibration error {result['calibration_error']:.3f}, NRMSE {result['nrmse']:.3f}"
            )
    figures = {
        "z_scores": str(z_histograms(zs, out / "z_scores.png", title=f"{phantom}, dose {dose}, M={realisations}")),
        "panels": str(
            method_panels(
                panels,
                out / "uq_panels.png",
                title=f"{phantom}, dose {dose}, {samples} posterior samples",
                input_label="input: OSEM (as in training)",
            )
        ),
        "calibration": str(
            calibration_curves(curves, out / "calibration_curves.png", title=f"{phantom}, M={realisations}")
        ),
    }
    return {
        "command": "evaluate-uq",
        "phantom": phantom,
        "dose_fraction": dose,
        "realisations": realisations,
        "methods": results,
        "table": cal.coverage_table(results),
        "figures": figures,
    }


__all__ = ["DenoisingInput", "denoise_image", "evaluate_denoisers", "training_data_config"]
