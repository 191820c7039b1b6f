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

from petuq_sirf.operators.base import FunctionOperator, LinearOperator, check_term


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

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        """Geometric part ``G x`` (projector after the resolution model), without ``m`` and ``b``."""

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of the geometric part, ``G^T y``."""

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


class AcquisitionModelBase:
    """What every acquisition model shares: the terms ``m`` and ``b`` (checked once), ``m * G x + b`` from the
    geometric part, the cached sensitivity, and the linear part as a :class:`LinearOperator`.

    Subclasses set ``image_shape``, ``data_shape``, ``voxel_size_mm``, ``device`` and ``dtype``, call
    :meth:`_set_terms` and define ``geometric``/``geometric_adjoint`` (``G`` and ``G^T``), ``subset`` and
    ``with_terms``; backends whose kernels include ``m`` override ``direct``/``adjoint``/``forward``.
    ``batched`` terms ``(B, sinograms, views, tangential)`` give one model per batch item.
    """

    image_shape: tuple[int, int, int]
    data_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype = torch.float32

    def _set_terms(
        self, multiplicative: torch.Tensor | None, additive: torch.Tensor | None, batched: bool = False
    ) -> None:
        def term(t: torch.Tensor | None, default: float, name: str) -> torch.Tensor:
            if t is None:
                return torch.full(self.data_shape, default, dtype=self.dtype, device=self.device)
            return check_term(t, self.data_shape, name, self.dtype, self.device, batched=batched)

        self._m = term(multiplicative, 1.0, "multiplicative term")
        self._b = term(additive, 0.0, "additive term")
        if batched and self._m.shape != self._b.shape:
            raise ValueError(
                f"multiplicative {tuple(self._m.shape)} and additive {tuple(self._b.shape)} terms differ in shape"
            )
        self._sensitivity: torch.Tensor | None = None

    @property
    def multiplicative(self) -> torch.Tensor:
        return self._m

    @property
    def additive(self) -> torch.Tensor:
        return self._b

    def geometric(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiplicative * self.geometric(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direct(x) + self.additive

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.geometric_adjoint(self.multiplicative * y)

    def sensitivity(self) -> torch.Tensor:
        """``G^T m`` (computed once, then cached)."""
        if self._sensitivity is None:
            ones = torch.ones(self.multiplicative.shape, dtype=self.dtype, device=self.device)
            self._sensitivity = self.adjoint(ones)
        return self._sensitivity

    def linear_operator(self) -> LinearOperator:
        """The linear part ``x -> m * G x`` (adjoint ``G^T (m y)``) as a :class:`LinearOperator`."""
        return FunctionOperator(self.direct, self.adjoint, self.image_shape, self.data_shape, self.dtype, self.device)

    def geometric_operator(self) -> LinearOperator:
        """``G`` (projector after the resolution model) as a :class:`LinearOperator`."""
        return FunctionOperator(
            self.geometric, self.geometric_adjoint, self.image_shape, self.data_shape, self.dtype, self.device
        )

    def adjointness_test(self, **kwargs) -> float:
        """:meth:`LinearOperator.adjointness_test` of the linear part ``m * G``."""
        return self.linear_operator().adjointness_test(**kwargs)

    def norm(self, **kwargs) -> float:
        """:meth:`LinearOperator.norm` of the linear part ``m * G`` (largest singular value)."""
        return self.linear_operator().norm(**kwargs)


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
