"""Every linear operator and every backend's acquisition model: exact adjoint and the norm by power iteration.

The embedded backend, the SIRF and STIR adapters on their fakes (the real ones run the same checks through
``test_backend_conformance.py`` inside the SyneRBI container), subsets, batched models and the operator
algebra (composition, adjoint) itself.
"""

import pytest
import torch

from petuq_sirf.backends.bridge import DEFAULT_RAYS_PER_BIN
from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.backends.registry import make_acquisition_model
from petuq_sirf.operators import (
    FunctionOperator,
    GaussianPSF,
    LinearOperator,
    Multiplication,
    RayTracingProjector,
)
from petuq_sirf.recon.lowdose import BatchedAcquisition
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from tests.backends import fake_sirf, fake_stir

ADJ_TOL_F32 = 1e-5


@pytest.fixture(scope="module")
def layout_2d() -> SinogramLayout:
    """test-2d with views mashed by 4 and 41 tangential bins: 16 x 41 bins keep power iterations quick."""
    return SinogramLayout(get_scanner("test-2d"), view_mashing=4, num_tangential_bins=41)


@pytest.fixture(scope="module")
def image_2d() -> ImageGeometry:
    return ImageGeometry((1, 21, 21), (4.0, 11.0, 11.0))


image_2d_odd = image_2d


def _terms(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = 0.5 + torch.rand(shape, generator=g)
    m[..., ::7] = 0.0
    return m, 0.1 + torch.rand(shape, generator=g)


def _dense(op: LinearOperator) -> torch.Tensor:
    """The matrix of a small operator, column by column (float64)."""
    n = int(torch.tensor(op.in_shape).prod())
    eye = torch.eye(n, dtype=torch.float64)
    return torch.stack([op.forward(e.reshape(op.in_shape)).reshape(-1).double() for e in eye], dim=1)


class _Matrix(LinearOperator):
    """A dense matrix, optionally with a wrong adjoint (to prove the test catches it)."""

    def __init__(self, a: torch.Tensor, wrong_adjoint: bool = False):
        self.a, self.wrong = a, wrong_adjoint
        self.in_shape, self.out_shape = (a.shape[1],), (a.shape[0],)
        self.dtype = a.dtype

    def forward(self, x):
        return self.a @ x

    def adjoint(self, y):
        return (self.a.T @ y) * (1.1 if self.wrong else 1.0)


def test_adjointness_test_and_norm_are_right_on_a_matrix():
    a = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = _Matrix(a)
    assert op.adjointness_test(num_trials=3) < 1e-13
    assert _Matrix(a, wrong_adjoint=True).adjointness_test() > 1e-3
    assert op.norm(num_iterations=500, rtol=1e-12) == pytest.approx(float(torch.linalg.matrix_norm(a, 2)), rel=1e-8)
    assert (op.H @ op).norm(num_iterations=500, rtol=1e-12) == pytest.approx(op.norm() ** 2, rel=1e-4)


def test_composition_and_adjoint_operator():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab = _Matrix(a) @ _Matrix(b)
    x, y = torch.randn(3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    assert torch.allclose(ab.forward(x), a @ b @ x)
    assert torch.allclose(ab.adjoint(y), b.T @ a.T @ y)
    assert torch.allclose(ab.H.forward(y), ab.adjoint(y))
    assert ab.in_shape == (3,) and ab.out_shape == (6,) and ab.adjointness_test() < 1e-13
    with pytest.raises(ValueError, match="cannot compose"):
        _Matrix(b) @ _Matrix(a)


def test_projector_psf_and_multiplication(layout_2d, image_2d):
    proj = RayTracingProjector(layout_2d, image_2d, dtype=torch.float64)
    psf = GaussianPSF(5.0, image_2d.voxel_size_mm, image_2d.shape)
    m = Multiplication(_terms(layout_2d.shape)[0].double())
    for op in (proj, psf, m, m @ proj @ psf):
        assert op.adjointness_test(num_trials=2, dtype=torch.float64) < 1e-12, op
    # the norm by power iteration equals the largest singular value of the assembled matrix
    small = GaussianPSF(6.0, (4.0, 4.0, 4.0), (1, 6, 5))
    assert small.norm(num_iterations=1000, rtol=1e-8) == pytest.approx(
        float(torch.linalg.matrix_norm(_dense(small), 2)), rel=1e-6
    )
    assert psf.norm() <= 1.0 + 1e-6  # a normalised blur never amplifies
    with pytest.raises(ValueError, match="finite and >= 0"):
        Multiplication(torch.tensor([1.0, -1.0]))


def test_embedded_model_is_the_composition(layout_2d, image_2d):
    m, b = _terms(layout_2d.shape)
    model = EmbeddedAcquisitionModel(layout_2d, image_2d, m, b, psf_fwhm_mm=4.0)
    x = torch.rand(image_2d.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(model.linear_operator().forward(x), model.direct(x))
    assert torch.allclose(model.geometric_operator().forward(x), model.geometric(x))
    assert torch.allclose(model.forward(x), m * model.geometric(x) + b, rtol=1e-5, atol=1e-6)
    y = torch.rand(layout_2d.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(model.adjoint(y), model.geometric_adjoint(m * y), rtol=1e-5, atol=1e-5)


def _models(kind, monkeypatch, layout, image):
    m, b = _terms(layout.shape, seed=4)
    if kind in ("sirf", "stir"):
        (fake_sirf if kind == "sirf" else fake_stir).install(monkeypatch)
    model = make_acquisition_model(kind, layout, image, m, b, psf_fwhm_mm=4.0)
    return model


@pytest.mark.parametrize("kind", ["embedded", "sirf", "stir"])
def test_every_backend_adjointness_and_norm(kind, monkeypatch, layout_2d, image_2d_odd):
    model = _models(kind, monkeypatch, layout_2d, image_2d_odd)
    for op in (model, model.subset(1, 3), model.with_terms(additive=torch.zeros(layout_2d.shape))):
        assert op.adjointness_test() < ADJ_TOL_F32, (kind, op)
    geo = model.geometric_operator()
    assert geo.adjointness_test() < ADJ_TOL_F32
    # ||m G|| <= max(m) ||G|| and the geometric part is the model with unit terms
    norm_g, norm_mg = geo.norm(rtol=1e-4), model.norm(rtol=1e-4)
    assert 0 < norm_mg <= float(model.multiplicative.max()) * norm_g * (1 + 1e-3)
    unit = model.with_terms(torch.ones(layout_2d.shape), torch.zeros(layout_2d.shape))
    assert unit.norm(rtol=1e-4) == pytest.approx(norm_g, rel=1e-3)
    x = torch.rand(image_2d_odd.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(model.geometric(x), unit.direct(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["embedded", "sirf", "stir"])
def test_backends_agree_on_the_norm(kind, monkeypatch, layout_2d, image_2d_odd):
    # the external backends (fakes here) trace STIR's model: the embedded model with the same settings
    matched = (
        {}
        if kind == "embedded"
        else {"axial_model": "tube", "ray_model": "siddon", "rays_per_bin": DEFAULT_RAYS_PER_BIN}
    )
    terms = _terms(layout_2d.shape, seed=4)
    ref = EmbeddedAcquisitionModel(layout_2d, image_2d_odd, *terms, psf_fwhm_mm=4.0, **matched)
    model = _models(kind, monkeypatch, layout_2d, image_2d_odd)
    assert model.norm(rtol=1e-5) == pytest.approx(ref.norm(rtol=1e-5), rel=1e-3)


def test_batched_model(layout_2d, image_2d):
    geometric = EmbeddedAcquisitionModel(layout_2d, image_2d, psf_fwhm_mm=4.0)
    m, b = _terms((3, *layout_2d.shape), seed=6)
    batched = BatchedAcquisition(geometric, m, b)
    assert batched.adjointness_test() < ADJ_TOL_F32
    x = torch.rand(3, *image_2d.shape, generator=torch.Generator().manual_seed(7))
    one = EmbeddedAcquisitionModel(layout_2d, image_2d, m[1], b[1], psf_fwhm_mm=4.0)
    assert torch.allclose(batched.forward(x)[1], one.forward(x[1]), rtol=1e-5, atol=1e-5)
    assert torch.allclose(batched.sensitivity()[1], one.sensitivity(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiplicative term has shape"):
        BatchedAcquisition(geometric, m[..., :-1], b)


def test_function_operator_wraps_callables():
    a = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    op = FunctionOperator(lambda x: a @ x, lambda y: a.T @ y, (4,), (4,), torch.float64)
    assert op.adjointness_test() < 1e-13
    assert FunctionOperator(lambda x: a @ x, lambda y: a @ y, (4,), (4,), torch.float64).adjointness_test() > 1e-3
