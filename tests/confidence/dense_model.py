"""A dense-matrix acquisition model for tiny problems with an analytic likelihood (tests only)."""

from __future__ import annotations

import torch


class DenseAcquisitionModel:
    """``ybar = m * (A x) + b``, dense ``A`` ``(bins, voxels)``; images ``image_shape`` (default ``(1, 1, n)``), data ``(1, 1, bins)``."""

    def __init__(self, matrix: torch.Tensor, multiplicative=None, additive=None, image_shape=None) -> None:
        self.matrix = matrix.float()
        bins, voxels = matrix.shape
        self.image_shape = tuple(image_shape) if image_shape is not None else (1, 1, voxels)
        self.data_shape = (1, 1, bins)
        self.voxel_size_mm = (1.0, 1.0, 1.0)
        self.device = torch.device("cpu")
        self._m = torch.ones(self.data_shape) if multiplicative is None else multiplicative.float()
        self._b = torch.zeros(self.data_shape) if additive is None else additive.float()

    @property
    def multiplicative(self) -> torch.Tensor:
        return self._m

    @property
    def additive(self) -> torch.Tensor:
        return self._b

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:-3], -1) @ self.matrix.T
        return self._m * flat.reshape(*x.shape[:-3], *self.data_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direct(x) + self._b

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        flat = (self._m * y).reshape(*y.shape[:-3], -1) @ self.matrix
        return flat.reshape(*y.shape[:-3], *self.image_shape)

    def sensitivity(self) -> torch.Tensor:
        return self.adjoint(torch.ones(self.data_shape))

    def subset(self, index: int, num_subsets: int):
        raise NotImplementedError  # one view only

    def with_terms(self, multiplicative=None, additive=None):
        return DenseAcquisitionModel(
            self.matrix,
            self._m if multiplicative is None else multiplicative,
            self._b if additive is None else additive,
            self.image_shape,
        )
