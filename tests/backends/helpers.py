"""Shared pieces of the adapter tests: smooth test images and a tolerance per implementation."""

from __future__ import annotations

import torch

from petuq_sirf.backends.bridge import DEFAULT_RAYS_PER_BIN
from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.scanner import ImageGeometry, SinogramLayout

# NRMSE allowed between the real STIR/SIRF ray tracer and the STIR-matched embedded model
# (:func:`stir_matched_model`: the same ray tracing in float64 vs STIR's float32; measured about 1e-5, see
# docs/sirf_stir.md); the fakes (that model inside) must agree to float precision.
REAL_NRMSE = 1e-4


def stir_matched_model(layout: SinogramLayout, image: ImageGeometry, *terms, **options) -> EmbeddedAcquisitionModel:
    """The embedded model with the external backends' default projector: STIR's axial tube, exact
    intersection lengths, :data:`DEFAULT_RAYS_PER_BIN` tangential rays per bin."""
    return EmbeddedAcquisitionModel(
        layout, image, *terms, axial_model="tube", ray_model="siddon", rays_per_bin=DEFAULT_RAYS_PER_BIN, **options
    )


def smooth_image(image: ImageGeometry, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    """Sums of random Gaussian blobs inside a 45 mm radius: smooth enough to compare projectors."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = image.meshgrid_mm(torch.float32)
    axial_mm = max(image.shape[0] * image.voxel_size_mm[0], 1.0)
    out = []
    for _ in range(batch or 1):
        x = torch.zeros(image.shape)
        for _ in range(5):
            c = (torch.rand(3, generator=g) - 0.5) * torch.tensor([0.5 * axial_mm, 60.0, 60.0])
            w = 8.0 + 10.0 * float(torch.rand(1, generator=g))
            x += float(torch.rand(1, generator=g) + 0.2) * torch.exp(
                -((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * w**2)
            )
        out.append(x)
    return torch.stack(out) if batch else out[0]


def nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


def assert_close(impl: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5):
    """Float agreement for the fakes; NRMSE within :data:`REAL_NRMSE` for the real libraries."""
    if impl == "fake":
        assert torch.allclose(actual, expected, rtol=rtol, atol=atol), nrmse(actual, expected)
    else:
        assert nrmse(actual, expected) < REAL_NRMSE, nrmse(actual, expected)
