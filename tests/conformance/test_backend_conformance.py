"""Conformance suite every acquisition-model backend must pass.

Parametrised over ``embedded``, ``sirf`` and ``stir`` and over odd and even in-plane image sizes;
the SIRF/STIR cases skip where those modules do not import, and run in-process only after a smoke
run in a child process came back clean (``tests/backends/isolation.py``: a crash in the C++
libraries fails those tests instead of killing pytest). See docs/sirf_stir.md.
"""

import numpy as np
import pytest
import torch

from petuq_sirf.backends.registry import BACKENDS, backend_available, make_acquisition_model
from tests.backends.isolation import real_backend_guard

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# the embedded backend twice: its default (Joseph, line) and the STIR-matched model (exact intersection
# lengths, 2 tangential rays per bin, STIR's axial tube) that the SIRF/STIR backends are compared with
EMBEDDED_SIDDON = "embedded-siddon"
_SIDDON_OPTIONS = {"ray_model": "siddon", "rays_per_bin": 2, "axial_model": "tube"}


@pytest.fixture(params=[*BACKENDS, EMBEDDED_SIDDON])
def backend(request):
    if request.param not in ("embedded", EMBEDDED_SIDDON):
        real_backend_guard(request.param)
    if request.param != EMBEDDED_SIDDON and not backend_available(request.param):
        pytest.skip(f"backend {request.param!r} is not installed here")
    return request.param


def _make(backend, *args, **kwargs):
    if backend == EMBEDDED_SIDDON:
        return make_acquisition_model("embedded", *args, **kwargs, **_SIDDON_OPTIONS)
    return make_acquisition_model(backend, *args, **kwargs)


def _terms(shape, seed=0, zeros=False):
    g = torch.Generator().manual_seed(seed)
    m = 0.5 + torch.rand(shape, generator=g)
    if zeros:
        m[..., ::7] = 0.0  # bins with no sensitivity (gaps) but some background
    b = 0.1 + torch.rand(shape, generator=g)
    return m, b


def _dot(a, b):
    return float((a.double() * b.double()).sum())


@pytest.fixture
def model_2d(backend, layout_2d, grid_2d):
    m, b = _terms(layout_2d.shape)
    return _make(backend, layout_2d, grid_2d, m, b)


def test_shapes_and_voxel_sizes(model_2d, layout_2d, grid_2d, backend, layout_3d, grid_3d):
    assert tuple(model_2d.image_shape) == grid_2d.shape
    assert tuple(model_2d.data_shape) == layout_2d.shape
    assert tuple(model_2d.voxel_size_mm) == pytest.approx(grid_2d.voxel_size_mm)
    x = torch.rand(2, *grid_2d.shape)  # a batch
    assert model_2d.forward(x).shape == (2, *layout_2d.shape)
    assert model_2d.adjoint(torch.rand(2, *layout_2d.shape)).shape == (2, *grid_2d.shape)
    m3 = _make(backend, layout_3d, grid_3d)
    assert tuple(m3.data_shape) == layout_3d.shape == (11, 24, 48)
    assert m3.forward(torch.rand(grid_3d.shape)).shape == layout_3d.shape


def test_adjoint_identity(backend, layout_3d, grid_3d):
    m, b = _terms(layout_3d.shape, seed=1)
    model = _make(backend, layout_3d, grid_3d, m, b)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(grid_3d.shape, generator=g)
    y = torch.rand(layout_3d.shape, generator=g)
    lhs, rhs = _dot(model.direct(x), y), _dot(x, model.adjoint(y))
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_linearity(model_2d, grid_2d):
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(grid_2d.shape, generator=g), torch.rand(grid_2d.shape, generator=g)
    lhs = model_2d.direct(2.5 * x1 - 0.7 * x2)
    rhs = 2.5 * model_2d.direct(x1) - 0.7 * model_2d.direct(x2)
    assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4 * float(rhs.abs().max()))


def test_positivity(model_2d, grid_2d, layout_2d):
    g = torch.Generator().manual_seed(4)
    assert (model_2d.forward(torch.rand(grid_2d.shape, generator=g)) >= 0).all()
    assert (model_2d.adjoint(torch.rand(layout_2d.shape, generator=g)) >= 0).all()
    sens = model_2d.sensitivity()
    _, ny, nx = grid_2d.shape
    assert (sens >= 0).all() and sens[0, ny // 2, nx // 2] > 0


def _analytic_chords(layout, radius_mm):
    s = torch.as_tensor(layout.tangential_positions_mm(), dtype=torch.float32)
    return s, 2 * torch.sqrt((radius_mm**2 - s**2).clamp_min(0))


def test_uniform_cylinder_matches_analytic_chord_lengths(backend, layout_2d, grid_2d, layout_3d, grid_3d):
    # 2D: a uniform disc of activity 1 projects to its chord lengths 2 sqrt(r^2 - s^2) (mm)
    model = _make(backend, layout_2d, grid_2d)
    _, yy, xx = grid_2d.meshgrid_mm()
    radius = 60.0
    disc = ((yy**2 + xx**2) <= radius**2).float()
    s, chord = _analytic_chords(layout_2d, radius)
    inner = s.abs() < 0.8 * radius
    ratio = model.forward(disc)[0][:, inner] / chord[inner]
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.02)
    assert float((ratio - 1).abs().max()) < 0.06
    # 3D: the direct (ring difference 0 on average) sinograms of a long uniform cylinder
    model3 = _make(backend, layout_3d, grid_3d)
    _, yy, xx = grid_3d.meshgrid_mm()
    cyl = ((yy**2 + xx**2) <= 50.0**2).float()
    s, chord = _analytic_chords(layout_3d, 50.0)
    inner = s.abs() < 40.0
    _, dz = layout_3d.sinogram_z_mm()
    direct = torch.as_tensor(np.flatnonzero(dz == 0))
    ratio = model3.forward(cyl)[direct][:, :, inner] / chord[inner]
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.03)
    assert float((ratio - 1).abs().max()) < 0.12
    # outside the cylinder's shadow nothing is projected: the voxelised edge reaches one voxel further; an
    # even grid exchanged with STIR at half-voxel positions (bridge.StirImageGrid, a 2-tap blur) half a voxel more
    half_voxel = model3.projector_settings().get("image_exchange") == "half-voxel"
    outside = s.abs() > 50.0 + grid_3d.voxel_size_mm[1] * (1.5 if half_voxel else 1.0)
    assert float(model3.forward(cyl)[direct][:, :, outside].abs().max()) < 1e-3


def test_additive_term_convention(backend, layout_2d, grid_2d):
    """``forward = m * G x + b`` with ``b`` in counts, also where ``m = 0`` (SIRF needs a background term there)."""
    m, b = _terms(layout_2d.shape, seed=5, zeros=True)
    model = _make(backend, layout_2d, grid_2d, m, b)
    x = torch.rand(grid_2d.shape, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(model.forward(x) - model.direct(x), b, atol=1e-4)
    assert torch.allclose(model.forward(torch.zeros(grid_2d.shape)), b, atol=1e-5)
    unit = model.with_terms(multiplicative=torch.ones(layout_2d.shape), additive=torch.zeros(layout_2d.shape))
    assert torch.allclose(model.direct(x), m * unit.direct(x), rtol=1e-4, atol=1e-5)
    assert torch.allclose(model.multiplicative, m) and torch.allclose(model.additive, b)
    # the adjoint weights by m: G^T (m y)
    y = torch.rand(layout_2d.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(model.adjoint(y), unit.adjoint(m * y), rtol=1e-4, atol=1e-4)


def test_subsets_partition_the_views(model_2d, grid_2d, layout_2d):
    x = torch.rand(grid_2d.shape, generator=torch.Generator().manual_seed(8))
    full = model_2d.forward(x)
    n = 4
    total = torch.zeros(grid_2d.shape)
    for i in range(n):
        sub = model_2d.subset(i, n)
        views = torch.arange(i, layout_2d.num_views, n)
        assert torch.allclose(sub.forward(x), full[:, views], rtol=1e-5, atol=1e-5)
        total += sub.sensitivity()
    assert torch.allclose(total, model_2d.sensitivity(), rtol=1e-4, atol=1e-4)


def test_autograd_gradient_is_the_adjoint(model_2d, grid_2d, layout_2d):
    x = torch.rand(grid_2d.shape, generator=torch.Generator().manual_seed(9)).requires_grad_(True)
    w = torch.rand(layout_2d.shape, generator=torch.Generator().manual_seed(10))
    (model_2d.forward(x) * w).sum().backward()
    assert torch.allclose(x.grad, model_2d.adjoint(w), rtol=1e-4, atol=1e-4)
