"""Uncertainty-quality metrics (coverage, calibration, CRPS, conformal scales) and PET figures of merit."""

from petuq_sirf.uq.calibration import (
    DEFAULT_LEVELS,
    calibration_error,
    conformal_quantile,
    conformal_scales,
    coverage,
    coverage_curve,
    crps,
    evaluate_uq,
    frequentist_coverage,
    gaussian_interval,
    gaussian_nll,
    interval_score,
    sample_interval,
    sharpness,
)
from petuq_sirf.uq.figures_of_merit import (
    background_variability,
    contrast_recovery,
    image_metrics,
    nrmse,
    psnr,
    roi_bias,
    roi_mean,
)
from petuq_sirf.uq.std_scaling import MondrianStdScaling

__all__ = [
    "DEFAULT_LEVELS",
    "MondrianStdScaling",
    "background_variability",
    "calibration_error",
    "conformal_quantile",
    "conformal_scales",
    "contrast_recovery",
    "coverage",
    "coverage_curve",
    "crps",
    "interval_score",
    "evaluate_uq",
    "frequentist_coverage",
    "gaussian_interval",
    "gaussian_nll",
    "image_metrics",
    "nrmse",
    "psnr",
    "roi_bias",
    "roi_mean",
    "sample_interval",
    "sharpness",
]
