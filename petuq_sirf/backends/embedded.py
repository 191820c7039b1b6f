"""The embedded PyTorch backend: ``ybar = m * (P_geom (PSF x)) + b`` on CPU or GPU, differentiable."""

from __future__ import annotations

import weakref

import torch

from petuq_sirf.operators.acquisition import AcquisitionModelBase, subset_views
from petuq_sirf.operators.axial_tube import AXIAL_MODELS, AxialTubeProjector, line_projector
from petuq_sirf.operators.base import LinearOperator, Multiplication
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.operators.psf import GaussianPSF
from petuq_sirf.operators.siddon import SiddonProjector
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

# projector -> {(index, num_subsets): restricted projector}; entries go with their projector
_SUBSET_PROJECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class EmbeddedAcquisitionModel(AcquisitionModelBase):
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
        axial_model: ``"line"`` (default: each bin one line between the ring centres) or ``"tube"``
            (STIR's ray-tracing model: sub-rays spread over the sinogram's axial sampling,
            :mod:`petuq_sirf.operators.axial_tube`), to match the STIR/SIRF backends exactly.
        ray_model: ``"joseph"`` (default: bilinear interpolation, the fast kernels) or ``"siddon"``
            (exact intersection lengths, STIR's in-plane model, :mod:`petuq_sirf.operators.siddon`).
        rays_per_bin: tangential sub-rays per bin (``"siddon"`` only; STIR's ``num_tangential_LORs``).
            ``EmbeddedAcquisitionModel(..., axial_model="tube", ray_model="siddon", rays_per_bin=2)`` is the
            operator of the STIR/SIRF backends' default settings.
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
        projector: RayTracingProjector | SiddonProjector | AxialTubeProjector | None = None,
        axial_model: str = "line",
        ray_model: str = "joseph",
        rays_per_bin: int = 1,
    ) -> None:
        if axial_model not in AXIAL_MODELS:
            raise ValueError(f"unknown axial_model {axial_model!r}: choose one of {', '.join(AXIAL_MODELS)}")
        self.axial_model = axial_model
        self.ray_model = ray_model
        self.rays_per_bin = int(rays_per_bin)
        self.layout = layout
        self.image = image
        self.device = torch.device(device)
        self.dtype = dtype
        if projector is None:
            if axial_model == "tube":
                projector = AxialTubeProjector(
                    layout, image, device=self.device, dtype=dtype, ray_model=ray_model, rays_per_bin=rays_per_bin
                )
            else:
                projector = line_projector(
                    layout, image, device=self.device, dtype=dtype, ray_model=ray_model, rays_per_bin=rays_per_bin
                )
        self.projector = projector
        self.image_shape = image.shape
        self.data_shape = self.projector.data_shape
        self.voxel_size_mm = image.voxel_size_mm
        self.psf_fwhm_mm = psf_fwhm_mm
        fwhm = psf_fwhm_mm if isinstance(psf_fwhm_mm, tuple) else (float(psf_fwhm_mm),) * 3
        self.psf = GaussianPSF(fwhm, image.voxel_size_mm, image.shape) if any(f > 0 for f in fwhm) else None
        self._set_terms(multiplicative, additive)

    def projector_settings(self) -> dict:
        """The projector's settings as recorded in ``metrics.json``."""
        return {
            "backend": "embedded",
            "matrix": (
                "Joseph (bilinear interpolation per plane), exact matched adjoint"
                if self.ray_model == "joseph"
                else "exact intersection lengths (Siddon), exact matched adjoint"
            ),
            "ray_model": self.ray_model,
            "rays_per_bin": self.rays_per_bin,
            "axial_model": self.axial_model,
            "values_in": "mm",
            "psf_fwhm_mm": self.psf_fwhm_mm,
        }

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        """``G x`` (projector after PSF), no multiplicative factors."""
        return self.projector.forward(self.psf(x) if self.psf is not None else x)

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``G^T y`` (back projection, then the PSF's adjoint), no multiplicative factors."""
        z = self.projector.adjoint(y)
        return self.psf.adjoint(z) if self.psf is not None else z

    def geometric_operator(self) -> LinearOperator:
        """``G = P @ PSF`` composed from the projector and the resolution model (both :class:`LinearOperator`)."""
        return self.projector @ self.psf if self.psf is not None else self.projector

    def linear_operator(self) -> LinearOperator:
        """``Multiplication(m) @ P @ PSF``, the linear part ``m * G``."""
        return Multiplication(self._m) @ self.geometric_operator()

    def subset(self, index: int, num_subsets: int) -> EmbeddedAcquisitionModel:
        views = subset_views(self.data_shape[1], index, num_subsets)
        # restricted projectors are built once per projector and subset (building them dominates OSEM on small problems)
        cache = _SUBSET_PROJECTORS.setdefault(self.projector, {})
        proj = cache.get((index, num_subsets))
        if proj is None:
            proj = cache[(index, num_subsets)] = self.projector.restricted(views.numpy())
        return EmbeddedAcquisitionModel(
            self.layout,
            self.image,
            self._m[:, views],
            self._b[:, views],
            self.psf_fwhm_mm,
            self.device,
            self.dtype,
            projector=proj,
            axial_model=self.axial_model,
            ray_model=self.ray_model,
            rays_per_bin=self.rays_per_bin,
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
            axial_model=self.axial_model,
            ray_model=self.ray_model,
            rays_per_bin=self.rays_per_bin,
        )
