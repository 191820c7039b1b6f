"""Exact intersection-length ray tracing (operators/siddon.py): lengths against brute-force sampling, boundary
rays, tangential sub-rays, adjoint, matrix vs on-the-fly paths, and the embedded model's options."""

import math

import numpy as np
import pytest
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.operators.siddon import SiddonProjector, siddon_coefficients, tangential_offsets_mm
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner


def _sampled_line_integral(image: torch.Tensor, grid: ImageGeometry, p_a, p_b, samples: int = 200_000) -> float:
    """Midpoint rule along the segment with nearest-voxel look-up: an independent line integral (mm)."""
    t = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
    pts = p_a[None, :] + t[:, None] * (p_b - p_a)[None, :]  # (x, y, z)
    idx = []
    for axis, col in ((0, 2), (1, 1), (2, 0)):
        v = grid.voxel_size_mm[axis]
        lower = grid.first_voxel_mm(axis) - v / 2
        idx.append(torch.floor((pts[:, col] - lower) / v).long())
    inside = torch.ones(samples, dtype=torch.bool)
    for axis, i in enumerate(idx):
        inside &= (i >= 0) & (i < grid.shape[axis])
    vals = torch.zeros(samples, dtype=torch.float64)
    vals[inside] = image[idx[0][inside], idx[1][inside], idx[2][inside]]
    return float(vals.sum()) * float(torch.linalg.norm(p_b - p_a)) / samples


def test_lengths_match_brute_force_line_integrals():
    grid = ImageGeometry((5, 9, 11), (2.5, 1.5, 2.0), (0.4, -0.3, 0.2))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(grid.shape, generator=g, dtype=torch.float64)
    p_a = (torch.rand(40, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([60.0, 60.0, 20.0])
    p_b = (torch.rand(40, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([60.0, 60.0, 20.0])
    ray, idx, length = siddon_coefficients(p_a, p_b, grid)
    siddon = torch.zeros(40, dtype=torch.float64).index_add_(0, ray, (image.reshape(-1)[idx] * length).sum(1))
    brute = torch.tensor([_sampled_line_integral(image, grid, p_a[k], p_b[k]) for k in range(40)], dtype=torch.float64)
    assert (brute > 0).sum() >= 10  # enough rays actually cross the grid
    assert torch.allclose(siddon, brute, rtol=2e-3, atol=2e-3)
    # a uniform image: the sum of lengths is the length of the segment inside the box
    r, _, w = siddon_coefficients(p_a, p_b, grid)
    ones = torch.zeros(40, dtype=torch.float64).index_add_(0, r, w.sum(1))
    one = torch.ones(grid.shape, dtype=torch.float64)
    brute_ones = torch.tensor(
        [_sampled_line_integral(one, grid, p_a[k], p_b[k]) for k in range(40)], dtype=torch.float64
    )
    assert torch.allclose(ones, brute_ones, rtol=1e-3, atol=1e-3)
    # whole lines: a short segment inside the grid is traced through the whole grid
    inner_a = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    inner_b = torch.tensor([[0.6, 0.2, 0.3]], dtype=torch.float64)
    assert float(siddon_coefficients(inner_a, inner_b, grid)[2].sum()) == pytest.approx(0.5)
    assert float(siddon_coefficients(inner_a, inner_b, grid, whole_line=True)[2].sum()) == pytest.approx(22.0)


def test_axis_parallel_rays_and_rays_on_voxel_boundaries():
    grid = ImageGeometry((3, 5, 5), (2.0, 1.0, 1.0))
    # along x inside a row; along x on the boundary y = 0.5 between two rows; along z
    p_a = torch.tensor([[-10.0, 0.3, 0.0], [-10.0, 0.5, 0.0], [0.2, 0.1, -10.0]], dtype=torch.float64)
    p_b = torch.tensor([[10.0, 0.3, 0.0], [10.0, 0.5, 0.0], [0.2, 0.1, 10.0]], dtype=torch.float64)
    ray, idx, length = siddon_coefficients(p_a, p_b, grid)
    per_ray = torch.zeros(3, dtype=torch.float64).index_add_(0, ray, length.sum(1))
    assert per_ray.tolist() == pytest.approx([5.0, 5.0, 6.0])
    # the boundary ray: half of its length in each of the rows y = 2 and y = 3 (index), 5 voxels each
    img = torch.zeros(grid.num_voxels, dtype=torch.float64).index_add_(
        0, idx[ray == 1].reshape(-1), length[ray == 1].reshape(-1)
    )
    rows = img.reshape(grid.shape)[1].sum(dim=1)
    assert rows.tolist() == pytest.approx([0.0, 0.0, 2.5, 2.5, 0.0])
    assert float(img.reshape(grid.shape)[1, 2].max()) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def small():
    scanner = get_scanner("test-3d").with_(name="test-3d-siddon", num_rings=3)
    layout = SinogramLayout(scanner, span=1, max_ring_difference=1, view_mashing=4)
    return layout, ImageGeometry((5, 21, 21), (2.0, 4.0, 4.0))


def test_tangential_sub_rays_are_stirs(small):
    layout, image = small
    # STIR's per-bin sampling (s(k + 1) - s(k - 1)) / 2 of s(k) = R sin(k pi / N)
    s = layout.tangential_positions_mm()
    a = math.pi / layout.scanner.detectors_per_ring
    r = layout.scanner.effective_radius_mm
    k = layout.tangential_indices()
    sampling = torch.as_tensor((r * np.sin((k + 1) * a) - r * np.sin((k - 1) * a)) / 2, dtype=torch.float64)
    assert s[len(s) // 2] == 0.0
    assert torch.allclose(torch.as_tensor(tangential_offsets_mm(layout, 2)), torch.stack([-sampling / 4, sampling / 4]))
    assert torch.allclose(
        torch.as_tensor(tangential_offsets_mm(layout, 3))[:, 0],
        sampling[0] * torch.tensor([-1, 0, 1.0], dtype=torch.float64) / 3,
    )
    with pytest.raises(ValueError, match="rays_per_bin"):
        tangential_offsets_mm(layout, 0)
    # the projector's bins are the mean of the two shifted lines, traced independently here
    proj = SiddonProjector(layout, image, rays_per_bin=2, dtype=torch.float64)
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p_a, p_b = layout.lor_endpoints()
    p_a, p_b = p_a.reshape(-1, 3), p_b.reshape(-1, 3)
    d = p_b - p_a
    perp = torch.stack([-d[:, 1], d[:, 0], torch.zeros_like(d[:, 0])], 1)
    perp = perp / torch.linalg.norm(perp, dim=1, keepdim=True)
    expected = torch.zeros(p_a.shape[0], dtype=torch.float64)
    per_lor = sampling.repeat(layout.num_sinograms * layout.num_views)[:, None]  # flat (sinograms, views, tangential)
    for off in (-per_lor / 4, per_lor / 4):
        ray, idx, w = siddon_coefficients(p_a + off * perp, p_b + off * perp, image)
        expected.index_add_(0, ray, 0.5 * (x.reshape(-1)[idx] * w).sum(1))
    assert torch.allclose(proj.forward(x).reshape(-1), expected, rtol=1e-10, atol=1e-10)


def test_adjoint_and_both_paths_agree(small):
    layout, image = small
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, *image.shape, generator=g, dtype=torch.float64)
    y = torch.rand(2, *layout.shape, generator=g, dtype=torch.float64)
    matrix = SiddonProjector(layout, image, rays_per_bin=2, dtype=torch.float64)
    fly = SiddonProjector(layout, image, rays_per_bin=2, dtype=torch.float64, cache=False)
    assert matrix.cached and not fly.cached and "on the fly" in fly.describe()
    assert torch.allclose(matrix.forward(x), fly.forward(x), rtol=1e-12, atol=1e-10)
    assert torch.allclose(matrix.adjoint(y), fly.adjoint(y), rtol=1e-12, atol=1e-10)
    lhs = float((matrix.forward(x) * y).sum())
    assert lhs == pytest.approx(float((x * matrix.adjoint(y)).sum()), rel=1e-12)
    # autograd: the gradient of the forward projection is the back projection
    x0 = x[0].clone().requires_grad_(True)
    (fly.forward(x0) * y[0]).sum().backward()
    assert torch.allclose(x0.grad, fly.adjoint(y[0]), rtol=1e-12, atol=1e-10)
    # a subset of views is the slice of the full projection
    views = [1, 4]
    assert torch.allclose(matrix.restricted(views).forward(x[0]), matrix.forward(x[0])[:, views], atol=1e-10)


def test_embedded_model_options(small):
    layout, image = small
    model = EmbeddedAcquisitionModel(layout, image, axial_model="tube", ray_model="siddon", rays_per_bin=2)
    settings = model.projector_settings()
    assert settings["ray_model"] == "siddon" and settings["rays_per_bin"] == 2 and settings["axial_model"] == "tube"
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(3))
    full = model.forward(x)
    sub = model.subset(1, 3)
    assert sub.ray_model == "siddon" and sub.rays_per_bin == 2
    from petuq_sirf.operators.acquisition import subset_views

    assert torch.allclose(sub.forward(x), full[:, subset_views(layout.num_views, 1, 3)], rtol=1e-5, atol=1e-5)
    # the Joseph line and the Siddon line differ only by interpolation on a smooth image
    zz, yy, xx = image.meshgrid_mm(torch.float32)
    smooth = torch.exp(-(yy**2 + xx**2) / (2 * 20.0**2))
    joseph = EmbeddedAcquisitionModel(layout, image).forward(smooth)
    siddon = EmbeddedAcquisitionModel(layout, image, ray_model="siddon").forward(smooth)
    assert float(torch.linalg.norm(siddon - joseph) / torch.linalg.norm(joseph)) < 0.01
    with pytest.raises(ValueError, match="needs ray_model='siddon'"):
        EmbeddedAcquisitionModel(layout, image, rays_per_bin=2)
    with pytest.raises(ValueError, match="unknown ray_model"):
        EmbeddedAcquisitionModel(layout, image, ray_model="distance-driven")
