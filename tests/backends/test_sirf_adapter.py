"""The SIRF adapter against the fake ``sirf.STIR`` (fake_sirf.py) AND the real SIRF where it imports.

Tests taking ``sirf_impl`` run with both: the fake must equal the embedded model to float
precision, the real SIRF must agree with it within ``helpers.REAL_NRMSE`` (so the
fake is checked against SIRF); exact properties are exact on both.
"""

import numpy as np
import pytest
import torch

from petuq_sirf.backends.bridge import (
    DEFAULT_RAYS_PER_BIN,
    from_stir_order,
    ours_from_sirf_terms,
    sirf_terms,
    stir_segment_order,
    stir_sinogram_order,
    to_stir_order,
)
from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.backends.sirf_backend import acquisition_template
from petuq_sirf.recon import osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from tests.backends.helpers import assert_close, smooth_image, stir_matched_model


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
def test_sirf_adapter_matches_embedded(sirf_impl, layout_3d, image_3d_odd, terms_3d, psf):
    m, b = terms_3d
    sirf_model = make_acquisition_model("sirf", layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    ref = stir_matched_model(layout_3d, image_3d_odd, m, b, psf_fwhm_mm=psf)
    x = smooth_image(image_3d_odd, seed=1, batch=2)  # batched
    y = ref.forward(x[1])
    assert_close(sirf_impl, sirf_model.forward(x), ref.forward(x))
    assert_close(sirf_impl, sirf_model.direct(x), ref.direct(x))
    assert_close(sirf_impl, sirf_model.adjoint(y), ref.adjoint(y), atol=1e-3)
    assert_close(sirf_impl, sirf_model.sensitivity(), ref.sensitivity(), atol=1e-3)
    sub, sub_ref = sirf_model.subset(1, 3), ref.subset(1, 3)
    assert_close(sirf_impl, sub.forward(x[0]), sub_ref.forward(x[0]))
    # exact on both: the additive convention (m = 0 bins through SIRF's background term)
    assert torch.allclose(sirf_model.forward(x[0]) - sirf_model.direct(x[0]), b, atol=1e-4)


def test_sirf_adapter_autograd_and_reconstruction(sirf_impl, layout_2d, image_2d_odd):
    g = torch.Generator().manual_seed(0)
    m, b = 0.5 + torch.rand(layout_2d.shape, generator=g), torch.rand(layout_2d.shape, generator=g)
    model = make_acquisition_model("sirf", layout_2d, image_2d_odd, m, b)
    ref = stir_matched_model(layout_2d, image_2d_odd, m, b)
    x = torch.rand(image_2d_odd.shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    w = torch.rand(layout_2d.shape, generator=torch.Generator().manual_seed(3))
    (model.forward(x) * w).sum().backward()
    assert torch.allclose(x.grad, model.adjoint(w), rtol=1e-4, atol=1e-4)
    a = model.adjoint(w.requires_grad_(True))
    a.sum().backward()  # gradient of the adjoint is the direct operator
    assert torch.allclose(w.grad, model.direct(torch.ones(image_2d_odd.shape)), rtol=1e-4, atol=1e-4)
    # OSEM runs unchanged on the SIRF model
    truth = smooth_image(image_2d_odd, seed=5)
    y = torch.poisson(ref.forward(50 * truth), generator=torch.Generator().manual_seed(4))
    rec = osem(model, y, num_iterations=2, num_subsets=2)
    rec_ref = osem(ref, y, num_iterations=2, num_subsets=2)
    assert_close(sirf_impl, rec.image, rec_ref.image, rtol=1e-3, atol=1e-3)
    new = model.with_terms(additive=torch.zeros(layout_2d.shape))
    assert torch.allclose(new.forward(torch.zeros(image_2d_odd.shape)), torch.zeros(layout_2d.shape))


def test_sirf_even_grid_and_explicit_settings(sirf_impl, layout_3d, image_3d, tmp_path):
    folder = tmp_path / "new" / "folder"
    model = make_acquisition_model("sirf", layout_3d, image_3d, workdir=folder)  # 40 x 40: even
    assert (folder / "template.hs").is_file() and (folder / "template.hv").is_file()
    settings = model.projector_settings()
    assert settings["num_tangential_lors"] == DEFAULT_RAYS_PER_BIN and settings["image_exchange"] == "half-voxel"
    ref = stir_matched_model(layout_3d, image_3d)
    x = smooth_image(image_3d, seed=6)
    assert float(model.forward(x).sum() / ref.forward(x).sum()) == pytest.approx(1.0, abs=0.01)
    w = torch.rand(layout_3d.shape, generator=torch.Generator().manual_seed(7))
    lhs = float((model.direct(x).double() * w).sum())
    assert lhs == pytest.approx(float((x.double() * model.adjoint(w)).sum()), rel=1e-4)


def test_sirf_template_follows_the_full_geometry(sirf_impl, tmp_path):
    """8 of the mMR's 64 rings, span 3, maximum ring difference 5, views mashed by 4, 120 bins: SIRF's shape."""
    scanner = get_scanner("mMR").with_(num_rings=8)
    layout = SinogramLayout(scanner, span=3, max_ring_difference=5, view_mashing=4, num_tangential_bins=120)
    acq = acquisition_template(layout, tmp_path / "t")
    assert tuple(int(d) for d in acq.dimensions())[-3:] == layout.shape
    image = ImageGeometry((15, 61, 61), (scanner.ring_spacing_mm / 2, 4.0, 4.0))
    model = make_acquisition_model("sirf", layout, image, workdir=tmp_path / "m")
    assert model.forward(smooth_image(image)).shape == layout.shape


def test_sirf_and_stir_backends_trace_the_same_projector(sirf_impl, stir_impl, layout_3d, image_3d_odd):
    """Same settings on both external backends: the same projection (to float precision when both are real)."""
    sirf_model = make_acquisition_model("sirf", layout_3d, image_3d_odd)
    stir_model = make_acquisition_model("stir", layout_3d, image_3d_odd)
    assert (
        sirf_model.projector_settings()["num_tangential_lors"] == stir_model.projector_settings()["num_tangential_lors"]
    )
    x = smooth_image(image_3d_odd, seed=8)
    impl = "fake" if sirf_impl == stir_impl else "real"  # a fake against a real library: projector tolerance
    assert_close(impl, sirf_model.forward(x), stir_model.forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grid", ["odd", "even"])
def test_sirf_torch_bridge_gives_our_values_and_gradients(sirf_impl, layout_3d, image_3d, image_3d_odd, grid):
    """SIRF's own torch bridge (sirf.torch, SIRF >= 3.9) is preferred where it imports; it must agree with ours."""
    image = image_3d_odd if grid == "odd" else image_3d
    g = torch.Generator().manual_seed(9)
    m, b = 0.5 + torch.rand(layout_3d.shape, generator=g), torch.rand(layout_3d.shape, generator=g)
    ours = make_acquisition_model("sirf", layout_3d, image, m, b, psf_fwhm_mm=4.0, autograd="petuq")
    assert ours.autograd == "petuq" and ours.projector_settings()["autograd"] == "petuq"
    auto = make_acquisition_model("sirf", layout_3d, image, m, b, psf_fwhm_mm=4.0)
    if sirf_impl == "fake":  # the fake package has no sirf.torch: our bridge, and asking for SIRF's is one clear error
        assert auto.autograd == "petuq"
        with pytest.raises(ValueError, match="sirf.torch"):
            make_acquisition_model("sirf", layout_3d, image, autograd="sirf.torch")
        return
    pytest.importorskip("sirf.torch")
    # sirf.torch reads arrays through sirf.pysirf; a SIRF build whose pysirf does not load falls back to ours
    pytest.importorskip(
        "sirf.pysirf", reason="this SIRF's sirf.pysirf does not load (see docs/sirf_stir.md)", exc_type=ImportError
    )
    assert auto.autograd == "sirf.torch"
    x = smooth_image(image, seed=10, batch=2)
    w = torch.rand(2, *layout_3d.shape, generator=g)
    for fn in ("forward", "direct"):
        xa, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yo = getattr(auto, fn)(xa), getattr(ours, fn)(xo)
        assert ya.shape == yo.shape == (2, *layout_3d.shape)
        assert torch.allclose(ya, yo, rtol=1e-5, atol=1e-5)
        (ya * w).sum().backward()
        (yo * w).sum().backward()
        assert torch.allclose(xa.grad, xo.grad, rtol=1e-4, atol=1e-4)
        assert torch.allclose(xa.grad[1], ours.adjoint(w[1]), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown autograd"):
        make_acquisition_model("sirf", layout_3d, image, autograd="jax")
