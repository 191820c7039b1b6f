"""Linear operators (a :class:`LinearOperator` base with composition, adjointness test and norm), the projector,
the resolution model, and the acquisition-model protocol with its shared base."""

from petuq_sirf.operators.acquisition import AcquisitionModel, AcquisitionModelBase, check_data, subset_views
from petuq_sirf.operators.base import (
    AdjointOperator,
    ComposedOperator,
    FunctionOperator,
    LinearOperator,
    Multiplication,
    check_term,
)
from petuq_sirf.operators.projector import RayTracingProjector, joseph_coefficients
from petuq_sirf.operators.psf import GaussianPSF, gaussian_kernel_1d

__all__ = [
    "AcquisitionModel",
    "AcquisitionModelBase",
    "AdjointOperator",
    "ComposedOperator",
    "FunctionOperator",
    "GaussianPSF",
    "LinearOperator",
    "Multiplication",
    "RayTracingProjector",
    "check_data",
    "check_term",
    "gaussian_kernel_1d",
    "joseph_coefficients",
    "subset_views",
]
