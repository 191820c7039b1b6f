"""The embedded projector's STIR axial tube (``axial_model="tube"``, operators/axial_tube.py)."""

import numpy as np
import pytest
import torch

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.operators.axial_tube import AxialTubeProjector, axial_sampling_mm, axial_subrays
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner


@pytest.fixture(scope="module")
def scanner():
    return get_scanner("test-3d").with_(name="tube-4", num_rings=4)


def test_subrays_follow_stirs_axial_sampling(scanner):
    span1 = SinogramLayout(scanner, span=1, view_mashing=4)
    span3 = SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=4)
    half = ImageGeometry((7, 31, 31), (2.0, 4.0, 4.0))  # slices of half the 4 mm ring spacing
    # span 1: every segment one ring difference, sampling = ring spacing = 2 slices -> rays at +-1 mm
    assert np.all(axial_sampling_mm(span1) == 4.0)
    rays = axial_subrays(span1, half)
    assert [o for o, _ in rays] == [-1.0, 1.0] and all(np.all(w == 0.5) for _, w in rays)
    # span 3: the merged segment 0 is sampled every half ring (1 ray), the single-difference ones are not
    z_mid, dz = span3.sinogram_z_mm()
    offsets = dict(axial_subrays(span3, half))
    assert set(offsets) == {-1.0, 0.0, 1.0}
    merged = np.abs(dz) < 4 * 1.5
    assert np.all(offsets[0.0][merged] == 1) and np.all(offsets[1.0][~merged] == 0.5)
    assert np.allclose(sum(offsets.values()), 1)  # each sinogram's weights sum to 1
    with pytest.raises(ValueError, match="dividing the axial sampling"):
        axial_subrays(span1, ImageGeometry((5, 31, 31), (3.0, 4.0, 4.0)))


def test_tube_is_the_line_when_a_slice_is_a_sampling_step(scanner):
    layout = SinogramLayout(scanner, span=1, view_mashing=4)
    image = ImageGeometry((4, 31, 31), (4.0, 4.0, 4.0))
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(AxialTubeProjector(layout, image).forward(x), RayTracingProjector(layout, image).forward(x))


def test_direct_footprint_is_a_quarter_half_quarter(scanner):
    """A slice at a ring centre: the direct sinogram of that ring sees half of it, a slice half a ring off a quarter."""
    layout = SinogramLayout(scanner, span=1, view_mashing=4)
    image = ImageGeometry((7, 31, 31), (2.0, 4.0, 4.0))  # slice 2k at ring k (z = -6, -2, 2, 6 mm)
    tube, line = AxialTubeProjector(layout, image), RayTracingProjector(layout, image)
    z_mid, dz = layout.sinogram_z_mm()
    ring1 = int(np.flatnonzero((dz == 0) & np.isclose(z_mid, -2.0))[0])
    for plane, share in ((2, 0.5), (1, 0.25), (3, 0.25), (0, 0.0)):
        x = torch.zeros(image.shape)
        x[plane] = 1.0
        ref = line.forward(torch.roll(x, 2 - plane, 0))[ring1].sum()  # the same slice on the ring's centre
        assert float(tube.forward(x)[ring1].sum() / ref) == pytest.approx(share, abs=1e-6)


def test_tube_adjoint_subsets_and_model_option(scanner):
    layout = SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=2)
    image = ImageGeometry((7, 31, 31), (2.0, 4.0, 4.0))
    g = torch.Generator().manual_seed(1)
    m = 0.5 + torch.rand(layout.shape, generator=g)
    model = EmbeddedAcquisitionModel(layout, image, m, axial_model="tube")
    x, y = torch.rand(image.shape, generator=g), torch.rand(layout.shape, generator=g)
    lhs, rhs = float((model.direct(x).double() * y).sum()), float((x.double() * model.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)
    sub = model.subset(1, 3)
    views = torch.arange(1, layout.num_views, 3)
    assert torch.allclose(sub.direct(x), model.direct(x)[:, views], rtol=1e-5, atol=1e-5)
    assert sub.projector_settings()["axial_model"] == "tube" and model.with_terms().axial_model == "tube"
    line = EmbeddedAcquisitionModel(layout, image, m)
    assert not torch.allclose(model.direct(x), line.direct(x))  # the oblique segments differ
    with pytest.raises(ValueError, match="axial_model"):
        EmbeddedAcquisitionModel(layout, image, axial_model="cone")
