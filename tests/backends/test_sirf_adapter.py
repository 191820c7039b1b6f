"""The SIRF adapter against a fake ``sirf.STIR`` with SIRF's documented semantics (see fake_sirf.py).

These check our side of the boundary (term conversion, STIR array order, batching,
autograd); the real SIRF runs the conformance suite inside the SyneRBI container.
"""

import numpy as np
import pytest
import torch

from petuq_sirf.backends.bridge import (
    from_stir_order,
    ours_from_sirf_terms,
    sirf_terms,
    stir_segment_order,
    stir_sinogram_order,
    to_stir_order,
)
from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.recon import osem
from tests.backends import fake_sirf


def test_sirf_terms_reproduce_our_additive_term():
    m = torch.tensor([2.0, 0.5, 0.0, 1.0])
    b = torch.tensor([1.0, 1.0, 3.0, 0.0])
    S, a, b_s = sirf_terms(m, b)
    assert torch.equal(S, m)
    assert torch.allclose(a, torch.tensor([0.5, 2.0, 0.0, 0.0]))
    assert torch.equal(b_s, torch.tensor([0.0, 0.0, 3.0, 0.0]))  # m = 0: background term carries b
    _, b_back = ours_from_sirf_terms(S, a, b_s)
    assert torch.allclose(b_back, b)
    with pytest.raises(ValueError, match="differ in shape"):
        sirf_terms(m, b[:2])


def test_stir_array_order(layout_3d):
    # 3 segments ascending (-2, -1..1, +2) -> STIR arrays store segment 0, +1, -1
    assert stir_segment_order(5).tolist() == [2, 3, 1, 4, 0]
    order = stir_sinogram_order(layout_3d)
    assert layout_3d.sinograms_per_segment == [2, 7, 2]
    assert order.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1]
    a = np.random.default_rng(0).random(layout_3d.shape)
    assert np.array_equal(from_stir_order(to_stir_order(a, order), order), a)


@pytest.fixture
def terms_3d(layout_3d):
    g = torch.Generator().manual_seed(0)
    m = 0.5 + torch.rand(layout_3d.shape, generator=g)
    m[:, ::5] = 0.0
    b = 0.2 + torch.rand(layout_3d.shape, generator=g)
    return m, b


@pytest.mark.parametrize("psf", [0.0, 5.0])
def test_sirf_adapter_matches_embedded(monkeypatch, layout_3d, image_3d_odd, terms_3d, psf):
    fake_sirf.install(monkeypatch)
    m, b = terms_3d
    sirf_model = make_acquisition_model("sirf", layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    ref = EmbeddedAcquisitionModel(layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, *image_3d_odd.shape, generator=g)  # batched
    y = torch.rand(layout_3d.shape, generator=g)
    assert torch.allclose(sirf_model.forward(x), ref.forward(x), rtol=1e-4, atol=1e-5)
    assert torch.allclose(sirf_model.direct(x), ref.direct(x), rtol=1e-4, atol=1e-5)
    assert torch.allclose(sirf_model.adjoint(y), ref.adjoint(y), rtol=1e-4, atol=1e-4)
    assert torch.allclose(sirf_model.sensitivity(), ref.sensitivity(), rtol=1e-4, atol=1e-4)
    sub, sub_ref = sirf_model.subset(1, 3), ref.subset(1, 3)
    assert torch.allclose(sub.forward(x[0]), sub_ref.forward(x[0]), rtol=1e-4, atol=1e-5)
    assert torch.allclose(sub.sensitivity(), sub_ref.sensitivity(), rtol=1e-4, atol=1e-4)


def test_sirf_adapter_autograd_and_reconstruction(monkeypatch, layout_2d, image_2d_odd):
    fake_sirf.install(monkeypatch)
    layout_3d, image_3d_odd = layout_2d, image_2d_odd  # 2D keeps this quick
    g = torch.Generator().manual_seed(0)
    m, b = 0.5 + torch.rand(layout_2d.shape, generator=g), torch.rand(layout_2d.shape, generator=g)
    model = make_acquisition_model("sirf", layout_3d, image_3d_odd, m, b)
    ref = EmbeddedAcquisitionModel(layout_3d, image_3d_odd, m, b)
    x = torch.rand(image_3d_odd.shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    w = torch.rand(layout_3d.shape, generator=torch.Generator().manual_seed(3))
    (model.forward(x) * w).sum().backward()
    assert torch.allclose(x.grad, ref.adjoint(w), rtol=1e-4, atol=1e-4)
    a = model.adjoint(w.requires_grad_(True))
    a.sum().backward()  # gradient of the adjoint is the direct operator
    assert torch.allclose(w.grad, ref.direct(torch.ones(image_3d_odd.shape)), rtol=1e-4, atol=1e-4)
    # OSEM runs unchanged on the SIRF model
    y = torch.poisson(ref.forward(torch.ones(image_3d_odd.shape)), generator=torch.Generator().manual_seed(4))
    rec = osem(model, y, num_iterations=2, num_subsets=2)
    rec_ref = osem(ref, y, num_iterations=2, num_subsets=2)
    assert torch.allclose(rec.image, rec_ref.image, rtol=1e-3, atol=1e-3)
    new = model.with_terms(additive=torch.zeros(layout_3d.shape))
    assert torch.allclose(new.forward(torch.zeros(image_3d_odd.shape)), torch.zeros(layout_3d.shape))
