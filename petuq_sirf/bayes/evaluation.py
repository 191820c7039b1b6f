"""Evaluating denoisers' uncertainty: held-out data sets and the frequentist protocol.

Intervals are Gaussian, ``mean -/+ z std`` with the total predictive std; conformal recalibration
(:func:`petuq_sirf.uq.calibration.conformal_scales`) is fitted on a calibration set of other phantoms.
"""

from __future__ import annotations

import time

import torch

from petuq_sirf.bayes.denoisers import Denoiser
from petuq_sirf.bayes.training_data import DenoisingDataConfig, DenoisingDataset, noisy_realisations
from petuq_sirf.simulation.phantoms import Phantom
from petuq_sirf.uq import calibration as cal
from petuq_sirf.uq.figures_of_merit import nrmse, psnr


def _pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Voxels of ``x (N, y, x)`` in ``mask (N, y, x)`` as a ``(1, 1, V)`` image for the calibration metrics."""
    return x[mask].reshape(1, 1, -1)


def conformal_from_dataset(
    model: Denoiser, calib: DenoisingDataset, num_samples: int = 32, seed: int = 0
) -> dict[float, float]:
    """Split-conformal std scale factors per level from a calibration set (voxels in its masks)."""
    post = model.predict(calib.noisy, num_samples, seed)
    return cal.conformal_scales(
        _pooled(calib.target, calib.mask),
        _pooled(post.predictive_mean, calib.mask),
        _pooled(post.total_std, calib.mask),
    )


def evaluate_on_dataset(
    model: Denoiser,
    test: DenoisingDataset,
    scales: dict[float, float] | None = None,
    num_samples: int = 32,
    seed: int = 0,
) -> dict:
    """Accuracy and uncertainty quality on held-out pairs (voxels in the body masks, pooled).

    Keys: ``nrmse`` / ``nrmse_input`` (pooled), ``psnr_db`` (mean over images), ``uq`` (before recalibration,
    :func:`~petuq_sirf.uq.calibration.evaluate_uq`), ``uq_conformal`` (with ``scales``), ``rank_correlation``
    of std and absolute error, mean ``epistemic_std`` / ``aleatoric_std``, ``predict_time_per_image_s``.
    """
    start = time.perf_counter()
    post = model.predict(test.noisy, num_samples, seed)
    elapsed = time.perf_counter() - start
    mask = test.mask
    mean, std = post.predictive_mean, post.total_std
    target = _pooled(test.target, mask)
    out = {
        "num_images": len(test),
        "nrmse": float(torch.linalg.norm((mean - test.target)[mask]) / torch.linalg.norm(test.target[mask])),
        "nrmse_input": float(
            torch.linalg.norm((test.noisy - test.target)[mask]) / torch.linalg.norm(test.target[mask])
        ),
        "psnr_db": sum(psnr(mean[i][None], test.target[i][None], mask[i][None]) for i in range(len(test))) / len(test),
        "psnr_input_db": sum(psnr(test.noisy[i][None], test.target[i][None], mask[i][None]) for i in range(len(test)))
        / len(test),
        "uq": cal.evaluate_uq(target, mean=_pooled(mean, mask), std=_pooled(std, mask)),
        "rank_correlation": cal.rank_correlation(_pooled(std, mask), _pooled((mean - test.target).abs(), mask)),
        "epistemic_std": float(post.epistemic_std[mask].mean()),
        "aleatoric_std": float(post.aleatoric_std[mask].mean()),
        "predict_time_per_image_s": elapsed / len(test),
    }
    if scales is not None:
        out["conformal_scales"] = {f"{k:.2f}": v for k, v in scales.items()}
        out["uq_conformal"] = cal.evaluate_uq(target, mean=_pooled(mean, mask), std=_pooled(std, mask), scale=scales)
    return out


def frequentist_protocol(
    model: Denoiser,
    phantom: Phantom,
    data_config: DenoisingDataConfig,
    dose_fraction: float,
    num_realisations: int = 20,
    num_samples: int = 32,
    scales: dict[float, float] | None = None,
    seed: int = 1234,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Coverage of the truth of a held-out phantom over independent noise realisations.

    Each realisation is simulated and reconstructed like the training data and denoised. Returns the
    :func:`~petuq_sirf.uq.calibration.frequentist_coverage` table over the phantom's body (``truth > 0``) and
    its regions (with ``"conformal"`` when ``scales`` are given; ``nrmse`` / ``nrmse_input`` averaged over the
    realisations), the maps of the first realisation (truth, noisy, mean, std) and ``z``, the z-scores of all
    realisations over the body (flattened).
    """
    noisy, truth = noisy_realisations(phantom, data_config, dose_fraction, num_realisations, seed)
    m, z, ny, nx = noisy.shape
    post = model.predict(noisy.reshape(m * z, ny, nx), num_samples, seed)
    mean = post.predictive_mean.reshape(m, z, ny, nx)
    std = post.total_std.reshape(m, z, ny, nx)
    mask = truth > 0
    regions = {k: v for k, v in phantom.regions.items() if bool(v.any())}
    result = cal.frequentist_coverage(truth, mean=mean, std=std, mask=mask, regions=regions)
    if scales is not None:
        result["conformal"] = cal.frequentist_coverage(
            truth, mean=mean, std=std, mask=mask, regions=regions, scale=scales
        )
    result["dose_fraction"] = dose_fraction
    result["nrmse"] = sum(nrmse(mean[i], truth, mask) for i in range(m)) / m
    result["nrmse_input"] = sum(nrmse(noisy[i], truth, mask) for i in range(m)) / m
    maps = {
        "truth": truth,
        "noisy": noisy[0],
        "mean": mean[0],
        "std": std[0],
        "z": cal.z_scores(truth, mean, std, mask),
    }
    return result, maps
