"""The STIR adapter against a fake ``stir`` module with STIR's array conventions (see fake_stir.py)."""

import pytest
import torch

from petuq_sirf.backends.bridge import stir_image_geometry, stir_pixel_units
from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.backends.registry import make_acquisition_model
from tests.backends import fake_stir


@pytest.mark.parametrize("psf", [0.0, 4.0])
def test_stir_adapter_matches_embedded(monkeypatch, layout_3d, image_3d_odd, psf):
    fake_stir.install(monkeypatch)
    g = torch.Generator().manual_seed(0)
    m = 0.5 + torch.rand(layout_3d.shape, generator=g)
    b = torch.rand(layout_3d.shape, generator=g)
    model = make_acquisition_model("stir", layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    ref = EmbeddedAcquisitionModel(layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    x = torch.rand(2, *image_3d_odd.shape, generator=g)
    y = torch.rand(layout_3d.shape, generator=g)
    assert torch.allclose(model.forward(x), ref.forward(x), rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.adjoint(y), ref.adjoint(y), rtol=1e-4, atol=1e-4)
    assert torch.allclose(model.subset(2, 3).forward(x[0]), ref.subset(2, 3).forward(x[0]), rtol=1e-4, atol=1e-5)
    x0 = x[0].clone().requires_grad_(True)
    (model.forward(x0) * y).sum().backward()
    assert torch.allclose(x0.grad, ref.adjoint(y), rtol=1e-4, atol=1e-4)
    other = model.with_terms(additive=torch.zeros(layout_3d.shape))
    assert torch.allclose(other.forward(x[0]), ref.direct(x[0]), rtol=1e-4, atol=1e-5)


def test_stir_geometry_conventions(monkeypatch, layout_3d, image_3d, image_3d_odd):
    # measured with STIR 6 forward_project (docs/sirf_stir.md): z from the first ring, x-voxel units
    g = stir_image_geometry(layout_3d, image_3d_odd)
    assert g.offset_mm == (1.5 * 4.0, 0.0, 0.0)  # 4 rings of 4 mm: the scanner centre is 6 mm from ring 0
    assert g.first_voxel_mm(0) == pytest.approx(0.0)  # 7 planes of 2 mm start at the first ring
    assert stir_pixel_units(image_3d_odd) == 4.0
    fake_stir.install(monkeypatch)
    with pytest.raises(ValueError, match="odd in-plane image sizes"):
        make_acquisition_model("stir", layout_3d, image_3d)  # 40 x 40
