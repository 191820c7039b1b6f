"""Uncertainty-quality metrics and PET figures of merit."""

from petuq_sirf.uq.figures_of_merit import (
    background_variability,
    contrast_recovery,
    image_metrics,
    nrmse,
    psnr,
    roi_bias,
    roi_mean,
)

__all__ = [
    "background_variability",
    "contrast_recovery",
    "image_metrics",
    "nrmse",
    "psnr",
    "roi_bias",
    "roi_mean",
]
