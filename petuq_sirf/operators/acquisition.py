"""The acquisition-model protocol every backend implements.

Convention inside petuq_sirf (one convention, converted at the SIRF boundary)::

    ybar = m * (G x) + b

``G`` is the geometric projector including any resolution model, ``m`` the multiplicative
factors per bin (detector efficiency x attenuation factor, dimensionless) and ``b`` the
additive background in counts (randoms + scatter). SIRF writes ``y = S (G x + a) + b_s``;
it maps onto ours with ``S = m``, ``a = b / m`` (where ``m > 0``) and ``b_s = 0``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class AcquisitionModel(Protocol):
    """Shapes: images ``(z, y, x)``, data ``(sinograms, views, tangential)``; leading batch dims allowed."""

    image_shape: tuple[int, int, int]
    data_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    device: torch.device

    @property
    def multiplicative(self) -> torch.Tensor:
        """``m``, shape ``data_shape``."""

    @property
    def additive(self) -> torch.Tensor:
        """``b`` in counts, shape ``data_shape``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expected counts ``m * G x + b``."""

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        """Linear part ``m * G x``."""

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of the linear part, ``G^T (m * y)``."""

    def sensitivity(self) -> torch.Tensor:
        """Sensitivity image ``G^T m``, shape ``image_shape``."""

    def subset(self, index: int, num_subsets: int) -> AcquisitionModel:
        """The model restricted to views ``index, index + num_subsets, ...`` (data sliced the same way)."""

    def with_terms(
        self, multiplicative: torch.Tensor | None = None, additive: torch.Tensor | None = None
    ) -> AcquisitionModel:
        """The same projector with other multiplicative / additive terms."""


def subset_views(num_views: int, index: int, num_subsets: int) -> torch.Tensor:
    """View indices of ordered subset ``index`` of ``num_subsets`` (interleaved views)."""
    if not 1 <= num_subsets <= num_views:
        raise ValueError(f"number of subsets must be in 1..{num_views} (the number of views), got {num_subsets}")
    if not 0 <= index < num_subsets:
        raise ValueError(f"subset index {index} outside 0..{num_subsets - 1}")
    return torch.arange(index, num_views, num_subsets)


def check_data(y: torch.Tensor, shape: tuple[int, ...], name: str = "projection data") -> torch.Tensor:
    """Validate measured counts: shape, finite, non-negative. Returns ``y`` as a float tensor."""
    y = torch.as_tensor(y)
    if tuple(y.shape[-len(shape) :]) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(y.shape)}, but the acquisition model expects {tuple(shape)}")
    if not torch.is_floating_point(y):
        y = y.float()
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (y < 0).any():
        raise ValueError(f"{name} contains negative counts (min {y.min().item():.4g}); counts must be >= 0")
    return y
