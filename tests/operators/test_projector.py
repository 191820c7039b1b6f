import math

import pytest
import torch

from petuq_sirf.backends import EmbeddedAcquisitionModel
from petuq_sirf.operators import GaussianPSF, RayTracingProjector
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.attenuation import attenuation_factors


def _dot(a, b):
    return float((a.double() * b.double()).sum())


@pytest.mark.parametrize("cache", [True, False])
def test_adjoint_identity_2d(layout_2d, image_2d, cache, device):
    proj = RayTracingProjector(layout_2d, image_2d, cache=cache, device=device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(image_2d.shape, generator=g).to(device)
    y = torch.rand(layout_2d.shape, generator=g).to(device)
    lhs, rhs = _dot(proj.forward(x), y), _dot(x, proj.adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-4


@pytest.mark.parametrize("cache", [True, False])
def test_adjoint_identity_3d_with_psf_and_factors(layout_3d, image_3d, cache, device):
    g = torch.Generator().manual_seed(2)
    m = torch.rand(layout_3d.shape, generator=g) + 0.5
    proj = RayTracingProjector(layout_3d, image_3d, cache=cache, device=device)
    model = EmbeddedAcquisitionModel(layout_3d, image_3d, m, psf_fwhm_mm=5.0, device=device, projector=proj)
    x = torch.rand(image_3d.shape, generator=g).to(device)
    y = torch.rand(layout_3d.shape, generator=g).to(device)
    lhs, rhs = _dot(model.direct(x), y), _dot(x, model.adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_cached_and_on_the_fly_agree(layout_3d, image_3d):
    x = torch.rand(image_3d.shape)
    a = RayTracingProjector(layout_3d, image_3d, cache=True).forward(x)
    b = RayTracingProjector(layout_3d, image_3d, cache=False).forward(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_batched_projection_matches_single(layout_2d, image_2d):
    proj = RayTracingProjector(layout_2d, image_2d)
    x = torch.rand(3, *image_2d.shape)
    batch = proj.forward(x)
    assert batch.shape == (3, *layout_2d.shape)
    assert torch.allclose(batch[1], proj.forward(x[1]), atol=1e-4)


def _disk_setup():
    scanner = get_scanner("test-2d").with_(detectors_per_ring=256, num_tangential_bins=96, default_bin_size_mm=2.0)
    layout = SinogramLayout(scanner)
    image = ImageGeometry((1, 160, 160), (4.0, 1.0, 1.0))
    z, y, x = image.meshgrid_mm()
    return layout, image, x, y


def test_uniform_disk_projects_to_chord_lengths():
    layout, image, x, y = _disk_setup()
    radius = 50.0
    disk = ((x**2 + y**2) <= radius**2).float()
    sino = RayTracingProjector(layout, image).forward(disk)[0]
    s = torch.as_tensor(layout.tangential_positions_mm())
    chord = 2 * torch.sqrt((radius**2 - s**2).clamp_min(0))
    inner = s.abs() < 0.9 * radius
    rel = (sino[:, inner] - chord[inner]).abs() / chord[inner]
    assert rel.mean() < 0.01
    assert rel.max() < 0.05
    assert sino[:, s.abs() > radius + 2].abs().max() < 1e-6


def test_water_cylinder_attenuation_factors():
    layout, image, x, y = _disk_setup()
    radius = 60.0
    mu = 0.096 * ((x**2 + y**2) <= radius**2).float()
    af = attenuation_factors(RayTracingProjector(layout, image), mu)[0]
    s = torch.as_tensor(layout.tangential_positions_mm())
    chord = 2 * torch.sqrt((radius**2 - s**2).clamp_min(0))
    expected = torch.exp(-0.0096 * chord).float()
    inner = s.abs() < 0.9 * radius
    rel = (af[:, inner] - expected[inner]).abs() / expected[inner]
    assert rel.mean() < 0.005
    assert rel.max() < 0.03


def test_oblique_lors_in_a_cylinder_have_3d_chord_lengths():
    scanner = get_scanner("test-3d").with_(num_rings=8, detectors_per_ring=192, default_bin_size_mm=2.0)
    layout = SinogramLayout(scanner, span=1, max_ring_difference=7)
    image = ImageGeometry((30, 100, 100), (2.0, 1.5, 1.5))
    z, y, x = image.meshgrid_mm()
    radius = 40.0
    cyl = ((x**2 + y**2) <= radius**2).float()  # spans the whole axial field of view
    sino = RayTracingProjector(layout, image, cache=False).forward(cyl)
    s = torch.as_tensor(layout.tangential_positions_mm())
    _, dz = layout.sinogram_z_mm()
    p_a, p_b = layout.lor_endpoints()
    d = p_b - p_a
    slope = torch.linalg.norm(d, dim=-1) / torch.linalg.norm(d[..., :2], dim=-1)  # 3D / transaxial length
    chord = 2 * torch.sqrt((radius**2 - s**2).clamp_min(0))[None, None, :] * slope
    inner = s.abs() < 0.8 * radius
    rel = (sino[..., inner] - chord[..., inner]).abs() / chord[..., inner]
    assert rel.mean() < 0.02


def test_projector_is_differentiable_gradcheck():
    scanner = get_scanner("test-2d").with_(detectors_per_ring=16, num_tangential_bins=6)
    layout = SinogramLayout(scanner)
    image = ImageGeometry((1, 5, 5), (4.0, 30.0, 30.0))
    model = EmbeddedAcquisitionModel(layout, image, dtype=torch.float64, psf_fwhm_mm=(0.0, 20.0, 20.0))
    x = torch.rand(image.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.forward, (x,))
    y = torch.rand(layout.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model.adjoint, (y,))


def test_psf_is_self_adjoint_and_preserves_counts_inside():
    psf = GaussianPSF((4.0, 6.0, 6.0), (2.0, 2.0, 2.0))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(9, 20, 20, generator=g), torch.rand(9, 20, 20, generator=g)
    assert math.isclose(_dot(psf(a), b), _dot(a, psf(b)), rel_tol=1e-5)
    point = torch.zeros(9, 20, 20)
    point[4, 10, 10] = 1
    assert math.isclose(float(psf(point).sum()), 1.0, rel_tol=1e-5)


def test_wrong_image_shape_is_a_clear_error(layout_2d, image_2d):
    proj = RayTracingProjector(layout_2d, image_2d)
    with pytest.raises(ValueError, match="image has shape"):
        proj.forward(torch.ones(1, 10, 10))
    with pytest.raises(ValueError, match="projection data has shape"):
        proj.adjoint(torch.ones(2, 3, 4))
