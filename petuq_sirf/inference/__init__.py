"""Bayesian machinery shared by the denoisers and the reconstruction networks: SVI, PMC adaptive importance
sampling, weight posteriors and posterior-sample containers."""

from petuq_sirf.inference.ais import PMCConfig, PMCResult, effective_sample_size, pmc_sample
from petuq_sirf.inference.predictive import PosteriorSamples
from petuq_sirf.inference.svi import bayesianize, fit_svi, guide_posterior, make_guide
from petuq_sirf.inference.weight_posterior import (
    ParticlePosterior,
    PosteriorImage,
    SVIConfig,
    WeightPosterior,
    fit_weight_posterior,
    load_posterior,
    save_posterior,
)

__all__ = [
    "PMCConfig",
    "PMCResult",
    "ParticlePosterior",
    "PosteriorImage",
    "PosteriorSamples",
    "SVIConfig",
    "WeightPosterior",
    "bayesianize",
    "effective_sample_size",
    "fit_svi",
    "fit_weight_posterior",
    "guide_posterior",
    "load_posterior",
    "make_guide",
    "pmc_sample",
    "save_posterior",
]
