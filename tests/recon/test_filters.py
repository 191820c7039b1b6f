"""Count preservation of the post-filter and the PSF (issue 10, item 1)."""

import math

import torch

from petuq_sirf.operators import GaussianPSF
from petuq_sirf.recon import gaussian_postfilter


def _dot(a, b):
    return float((a.double() * b.double()).sum())


def test_postfilter_keeps_total_of_2d_image():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 32, 32, generator=g)
    image[:, :3] = 5.0  # activity at the edge of the field of view
    out = gaussian_postfilter(image, 8.0, (4.0, 3.8, 3.8))
    assert math.isclose(float(out.sum()), float(image.sum()), rel_tol=1e-5)
    assert not torch.allclose(out, image)  # it does filter in-plane


def test_postfilter_keeps_total_of_3d_image_including_end_slices():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(7, 16, 16, generator=g)
    out = gaussian_postfilter(image, (8.0, 6.0, 6.0), (2.0, 3.0, 3.0))
    assert math.isclose(float(out.sum()), float(image.sum()), rel_tol=1e-5)
    # a uniform image stays uniform: no loss at the first/last slice
    flat = gaussian_postfilter(torch.ones(7, 16, 16), (8.0, 6.0, 6.0), (2.0, 3.0, 3.0))
    assert torch.allclose(flat, torch.ones_like(flat), atol=1e-5)


def test_psf_on_single_slice_does_not_scale_the_image():
    psf = GaussianPSF(4.0, (4.0, 3.8, 3.8))
    flat = torch.ones(1, 20, 20)
    assert torch.allclose(psf(flat), flat, atol=1e-6)
    point = torch.zeros(1, 20, 20)
    point[0, 10, 10] = 1.0
    assert math.isclose(float(psf(point).sum()), 1.0, rel_tol=1e-6)
    # z kernel with several taps but a single slice: identity along z
    only_z = GaussianPSF((10.0, 0.0, 0.0), (2.0, 3.8, 3.8))
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(only_z(x), x)


def test_reflective_psf_is_self_adjoint_with_kernel_wider_than_the_image():
    psf = GaussianPSF((12.0, 6.0, 6.0), (2.0, 2.0, 2.0))  # z radius 8 > 3 slices: repeated mirroring
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 3, 12, 12, generator=g)
    assert math.isclose(_dot(psf(a), b), _dot(a, psf(b)), rel_tol=1e-6)
    assert math.isclose(float(psf(a).sum()), float(a.sum()), rel_tol=1e-6)
