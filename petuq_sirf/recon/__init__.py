"""Reconstruction on any acquisition model: MLEM/OSEM, MAP with the RDP, PnP-ADMM with a firmly nonexpansive
denoiser, the unrolled FBSEM network with Bayesian blocks, and their trained weights."""

from petuq_sirf.recon.em import Reconstruction, em_update, mlem, osem
from petuq_sirf.recon.filters import gaussian_postfilter
from petuq_sirf.recon.likelihood import poisson_gradient_ratio, poisson_log_likelihood
from petuq_sirf.recon.lowdose import BatchedAcquisition, LowDoseConfig, LowDoseSet, make_low_dose_set
from petuq_sirf.recon.map_rdp import map_objective, map_rdp
from petuq_sirf.recon.nonexpansive import NonexpansiveDenoiserConfig, ResidualDenoiser
from petuq_sirf.recon.pnp_admm import PnPADMMConfig, PnPPosterior, pnp_admm, pnp_admm_posterior
from petuq_sirf.recon.rdp import RelativeDifferencePrior
from petuq_sirf.recon.unrolled import (
    UnrolledConfig,
    UnrolledFBSEM,
    UnrolledTrainingConfig,
    calibrate_unrolled,
    predict_unrolled,
    train_unrolled,
)
from petuq_sirf.recon.weights import conformal_scales_of, load_network

__all__ = [
    "BatchedAcquisition",
    "LowDoseConfig",
    "LowDoseSet",
    "NonexpansiveDenoiserConfig",
    "PnPADMMConfig",
    "PnPPosterior",
    "Reconstruction",
    "RelativeDifferencePrior",
    "ResidualDenoiser",
    "UnrolledConfig",
    "UnrolledFBSEM",
    "UnrolledTrainingConfig",
    "calibrate_unrolled",
    "conformal_scales_of",
    "em_update",
    "gaussian_postfilter",
    "load_network",
    "make_low_dose_set",
    "map_objective",
    "map_rdp",
    "mlem",
    "osem",
    "pnp_admm",
    "pnp_admm_posterior",
    "poisson_gradient_ratio",
    "poisson_log_likelihood",
    "predict_unrolled",
    "train_unrolled",
]
