"""Bayesian machinery shared by the denoisers and the reconstruction networks: one SVI fitter (its own Pyro
param store, seeded on a fork of the global RNG), PMC adaptive importance sampling, weight posteriors
(``PyroModule`` model and guide objects), ``Predictive``-based posterior predictive outputs and
posterior-sample containers."""

from petuq_sirf.inference.ais import PMCConfig, PMCResult, effective_sample_size, pmc_sample
from petuq_sirf.inference.predictive import PosteriorSamples
from petuq_sirf.inference.rng import seeded
from petuq_sirf.inference.svi import SVIFitter, bayesianize, fit_svi, guide_posterior, make_guide
from petuq_sirf.inference.weight_posterior import (
    BayesianNetwork,
    MeanFieldWeightGuide,
    ParticlePosterior,
    PosteriorImage,
    SVIConfig,
    WeightPosterior,
    fit_weight_posterior,
    load_posterior,
    predictive_outputs,
    save_posterior,
)

__all__ = [
    "BayesianNetwork",
    "MeanFieldWeightGuide",
    "SVIFitter",
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
    "predictive_outputs",
    "save_posterior",
    "seeded",
]
