"""PET image figures of merit: NRMSE, PSNR, ROI mean and bias, CRC, background variability.

Images are tensors ``(..., z, y, x)``; masks boolean tensors ``(z, y, x)``.
"""

from __future__ import annotations

import math

import torch


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(like.shape[-3:], dtype=torch.bool, device=like.device)
    mask = torch.as_tensor(mask, device=like.device).bool()
    if tuple(mask.shape) != tuple(like.shape[-3:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(like.shape[-3:])}")
    if not mask.any():
        raise ValueError("region mask is empty")
    return mask


def nrmse(image: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``||x - t||_mask / ||t||_mask``."""
    m = _mask(mask, truth)
    return float(torch.linalg.norm((image - truth)[..., m]) / torch.linalg.norm(truth[..., m]))


def psnr(image: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB, peak = max of the truth in the mask."""
    m = _mask(mask, truth)
    mse = float(((image - truth)[..., m] ** 2).mean())
    peak = float(truth[..., m].max())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def roi_mean(image: torch.Tensor, mask: torch.Tensor) -> float:
    return float(image[..., _mask(mask, image)].mean())


def roi_bias(image: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, reference: float | None = None) -> float:
    """Relative bias of the ROI mean ``(mean_roi(x) - mean_roi(t)) / reference``.

    ``reference`` defaults to ``mean_roi(t)``; pass the background mean for cold (zero) regions.
    """
    true_mean = roi_mean(truth, mask)
    ref = true_mean if reference is None else reference
    if ref == 0:
        raise ValueError("ROI bias needs a non-zero reference: the true ROI mean is 0, pass the background mean")
    return (roi_mean(image, mask) - true_mean) / ref


def contrast_recovery(image: torch.Tensor, lesion: torch.Tensor, background: torch.Tensor, true_ratio: float) -> float:
    """CRC ``(C_lesion / C_bkg - 1) / (R_true - 1)`` (hot and cold lesions alike)."""
    if true_ratio == 1:
        raise ValueError("contrast recovery is undefined for a true lesion-to-background ratio of 1")
    return (roi_mean(image, lesion) / roi_mean(image, background) - 1.0) / (true_ratio - 1.0)


def background_variability(image: torch.Tensor, background: torch.Tensor) -> float:
    """``SD_bkg / mean_bkg`` over the background voxels."""
    values = image[..., _mask(background, image)]
    return float(values.std() / values.mean())


def image_metrics(
    image: torch.Tensor,
    truth: torch.Tensor,
    regions: dict[str, torch.Tensor],
    contrast: dict[str, float] | None = None,
    mask: torch.Tensor | None = None,
) -> dict[str, float | dict]:
    """All figures of merit for one image: NRMSE, PSNR (in ``mask``, default truth > 0), BV, and per
    lesion ROI bias and CRC."""
    image, truth = image.detach().cpu().float(), truth.detach().cpu().float()
    mask = truth > 0 if mask is None else mask
    out: dict[str, float | dict] = {"nrmse": nrmse(image, truth, mask), "psnr_db": psnr(image, truth, mask)}
    background = regions.get("background")
    if background is not None and background.any():
        out["background_variability"] = background_variability(image, background)
    lesions = {}
    for name, region in regions.items():
        if name == "background" or not region.any():
            continue
        reference = roi_mean(truth, region)
        if reference == 0 and background is not None:
            reference = roi_mean(truth, background)
        entry = {"roi_bias": roi_bias(image, truth, region, reference), "roi_mean": roi_mean(image, region)}
        ratio = (contrast or {}).get(name)
        if ratio is not None and ratio != 1 and background is not None:
            entry["crc"] = contrast_recovery(image, region, background, ratio)
        lesions[name] = entry
    out["regions"] = lesions
    return out
