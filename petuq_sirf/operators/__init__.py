"""Linear operators: projector, resolution model, and the acquisition-model protocol."""

from petuq_sirf.operators.acquisition import AcquisitionModel, check_data, subset_views
from petuq_sirf.operators.projector import RayTracingProjector, joseph_coefficients
from petuq_sirf.operators.psf import GaussianPSF, gaussian_kernel_1d

__all__ = [
    "AcquisitionModel",
    "GaussianPSF",
    "RayTracingProjector",
    "check_data",
    "gaussian_kernel_1d",
    "joseph_coefficients",
    "subset_views",
]
