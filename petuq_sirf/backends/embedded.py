"""The embedded PyTorch backend: ``ybar = m * (P_geom (PSF x)) + b`` on CPU or GPU, differentiable."""

from __future__ import annotations

import torch

from petuq_sirf.operators.acquisition import subset_views
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.operators.psf import GaussianPSF
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout


class EmbeddedAcquisitionModel:
    """Acquisition model of the embedded backend (implements :class:`AcquisitionModel`).

    Args:
        layout: sinogram layout of the scanner.
        image: image grid.
        multiplicative: ``m`` per bin, shape ``layout.shape`` (default ones).
        additive: ``b`` in counts, shape ``layout.shape`` (default zeros).
        psf_fwhm_mm: image-space Gaussian resolution model, a number or ``(z, y, x)`` in mm (0 = none).
        device: torch device.
        dtype: float type of the model (float32; float64 for gradient checks).
        projector: an existing projector to share (for subsets / replicates).
    """

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        multiplicative: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
        psf_fwhm_mm: float | tuple[float, float, float] = 0.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        projector: RayTracingProjector | None = None,
    ) -> None:
        self.layout = layout
        self.image = image
        self.device = torch.device(device)
        self.dtype = dtype
        self.projector = projector or RayTracingProjector(layout, image, device=self.device, dtype=dtype)
        self.image_shape = image.shape
        self.data_shape = self.projector.data_shape
        self.voxel_size_mm = image.voxel_size_mm
        self.psf_fwhm_mm = psf_fwhm_mm
        fwhm = psf_fwhm_mm if isinstance(psf_fwhm_mm, tuple) else (float(psf_fwhm_mm),) * 3
        self.psf = GaussianPSF(fwhm, image.voxel_size_mm) if any(f > 0 for f in fwhm) else None
        self._m = self._term(multiplicative, 1.0, "multiplicative term")
        self._b = self._term(additive, 0.0, "additive term")
        self._sensitivity: torch.Tensor | None = None

    def _term(self, t: torch.Tensor | None, default: float, name: str) -> torch.Tensor:
        if t is None:
            return torch.full(self.data_shape, default, dtype=self.dtype, device=self.device)
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        if tuple(t.shape) != tuple(self.data_shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {self.data_shape}")
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{name} must be finite and >= 0")
        return t

    def projector_settings(self) -> dict:
        """The projector's settings as recorded in ``metrics.json``."""
        return {
            "backend": "embedded",
            "matrix": "Joseph (bilinear interpolation per plane), exact matched adjoint",
            "values_in": "mm",
            "psf_fwhm_mm": self.psf_fwhm_mm,
        }

    @property
    def multiplicative(self) -> torch.Tensor:
        return self._m

    @property
    def additive(self) -> torch.Tensor:
        return self._b

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        """``G x`` (projector after PSF), no multiplicative factors."""
        return self.projector.forward(self.psf(x) if self.psf is not None else x)

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return self._m * self.geometric(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.direct(x) + self._b

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        z = self.projector.adjoint(self._m * y)
        return self.psf.adjoint(z) if self.psf is not None else z

    def sensitivity(self) -> torch.Tensor:
        if self._sensitivity is None:
            self._sensitivity = self.adjoint(torch.ones(self.data_shape, dtype=self.dtype, device=self.device))
        return self._sensitivity

    def subset(self, index: int, num_subsets: int) -> EmbeddedAcquisitionModel:
        views = subset_views(self.data_shape[1], index, num_subsets)
        proj = self.projector.restricted(views.numpy())
        return EmbeddedAcquisitionModel(
            self.layout,
            self.image,
            self._m[:, views],
            self._b[:, views],
            self.psf_fwhm_mm,
            self.device,
            self.dtype,
            projector=proj,
        )

    def with_terms(
        self, multiplicative: torch.Tensor | None = None, additive: torch.Tensor | None = None
    ) -> EmbeddedAcquisitionModel:
        return EmbeddedAcquisitionModel(
            self.layout,
            self.image,
            self._m if multiplicative is None else multiplicative,
            self._b if additive is None else additive,
            self.psf_fwhm_mm,
            self.device,
            self.dtype,
            projector=self.projector,
        )

    def to_sirf_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, a)`` for SIRF's ``y = S (G x + a)``: ``S = m``, ``a = b / m`` (0 where ``m = 0``)."""
        a = torch.where(self._m > 0, self._b / self._m.clamp_min(1e-30), torch.zeros_like(self._b))
        return self._m, a
