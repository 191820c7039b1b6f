"""Bayesian denoisers of reconstructed PET images (Pyro BNN by SVI, PMC adaptive importance sampling,
MC dropout, deep ensembles) and their training data."""

from petuq_sirf.bayes.checkpoint import CheckpointError, checkpoint_info, load_denoiser, save_denoiser
from petuq_sirf.bayes.denoisers import METHODS, Denoiser, DenoiserConfig, make_denoiser
from petuq_sirf.bayes.evaluation import conformal_from_dataset
from petuq_sirf.bayes.networks import HeteroscedasticCNN, NetworkConfig
from petuq_sirf.bayes.training_data import DenoisingDataConfig, DenoisingDataset, load_or_generate
from petuq_sirf.inference.predictive import PosteriorSamples

__all__ = [
    "METHODS",
    "CheckpointError",
    "Denoiser",
    "DenoiserConfig",
    "DenoisingDataConfig",
    "DenoisingDataset",
    "HeteroscedasticCNN",
    "NetworkConfig",
    "PosteriorSamples",
    "checkpoint_info",
    "conformal_from_dataset",
    "load_denoiser",
    "load_or_generate",
    "make_denoiser",
    "save_denoiser",
]
