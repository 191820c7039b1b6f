"""Bayesian denoisers of reconstructed PET images (Pyro BNN by SVI, PMC adaptive importance sampling,
MC dropout, deep ensembles) and their training data."""

from petuq_sirf.bayes.denoisers import METHODS, Denoiser, DenoiserConfig, make_denoiser
from petuq_sirf.bayes.networks import HeteroscedasticCNN, NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig, DenoisingDataset, load_or_generate
from petuq_sirf.inference.predictive import PosteriorSamples

__all__ = [
    "METHODS",
    "Denoiser",
    "DenoiserConfig",
    "DenoisingDataConfig",
    "DenoisingDataset",
    "HeteroscedasticCNN",
    "NetworkConfig",
    "PosteriorSamples",
    "load_or_generate",
    "make_denoiser",
]
