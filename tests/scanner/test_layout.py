import numpy as np
import pytest
import torch

from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner, make_segments
from petuq_sirf.simulation.normalisation import bin_efficiencies


def test_mmr_span11_matches_stir_template():
    layout = SinogramLayout(get_scanner("Siemens mMR"), span=11, max_ring_difference=60)
    assert layout.sinograms_per_segment == [27, 49, 71, 93, 115, 127, 115, 93, 71, 49, 27]
    assert layout.shape == (837, 252, 344)
    mins = [s.min_ring_difference for s in layout.segments]
    assert mins == [-60, -49, -38, -27, -16, -5, 6, 17, 28, 39, 50]
    assert ImageGeometry.for_layout(layout).shape == (127, 344, 344)


@pytest.mark.parametrize("name,rings,dets", [("mMR", 64, 504), ("2011", 55, 672), ("GE Discovery 710", 24, 576)])
def test_named_scanners_and_aliases(name, rings, dets):
    s = get_scanner(name)
    assert (s.num_rings, s.detectors_per_ring) == (rings, dets)


def test_unknown_scanner_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scanner name 'Biograph Vision'"):
        get_scanner("Biograph Vision")


def test_span1_has_one_sinogram_per_ring_pair():
    layout = SinogramLayout(get_scanner("test-3d"), span=1)
    sino, ra, rb = layout.ring_pairs()
    assert layout.num_sinograms == 8 * 8 == len(sino)
    assert len(make_segments(1, 7)) == 15


def test_crystal_pairs_are_opposite_and_consistent_with_geometry():
    layout = SinogramLayout(get_scanner("test-2d"))
    det_a, det_b = layout.transaxial_crystal_pairs()
    n = layout.scanner.detectors_per_ring
    k = layout.tangential_indices()
    # the crystal difference encodes the tangential position: N/2 - k (mod N)
    assert np.all(np.mod(det_b - det_a, n) == np.mod(n // 2 - k, n)[None, None, :])
    # even bins: the crystals sit at the LOR end points (to within STIR's bin-size/radius sampling)
    p_a, p_b = layout.lor_endpoints()
    even = np.mod(n // 2 - k, 2) == 0
    angle_a = np.arctan2(p_a[0, :, :, 1].numpy(), p_a[0, :, :, 0].numpy())
    expected = det_a[0] * layout.scanner.crystal_angle_rad
    diff = np.angle(np.exp(1j * (angle_a - expected)))
    assert np.abs(diff[:, even]).max() < 0.05 * layout.scanner.crystal_angle_rad


def test_bin_efficiencies_count_merged_crystal_pairs():
    layout = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=4, view_mashing=2)
    counts = bin_efficiencies(layout)
    sino, _, _ = layout.ring_pairs()
    pairs_per_sino = torch.as_tensor(np.bincount(sino), dtype=torch.float32)
    expected = (pairs_per_sino * 2)[:, None, None].expand(layout.shape)
    assert torch.allclose(counts, expected)


def test_bad_layouts_are_rejected():
    scanner = get_scanner("test-2d")
    with pytest.raises(ValueError, match="span"):
        SinogramLayout(scanner, span=2).segments
    with pytest.raises(ValueError, match="view_mashing"):
        SinogramLayout(scanner, view_mashing=5)
    with pytest.raises(ValueError, match="max_ring_difference"):
        SinogramLayout(scanner, max_ring_difference=3)


def test_lor_parametrisation_follows_stir_get_lor():
    """STIR: X = s cos(phi) + a sin(phi), Y = s sin(phi) - a cos(phi), Z = m - a tan(theta)."""
    layout = SinogramLayout(get_scanner("mMR").with_(num_rings=6), span=1, max_ring_difference=3)
    p_a, p_b = layout.lor_endpoints()
    phi = torch.as_tensor(layout.view_angles_rad())[None, :, None]
    s = torch.as_tensor(layout.tangential_positions_mm())[None, None, :]
    for p in (p_a, p_b):
        assert torch.allclose(p[..., 0] * torch.cos(phi) + p[..., 1] * torch.sin(phi), s.expand(p.shape[:3]), atol=1e-6)
    # for positive ring differences the lower-z end point is on the +a side: (sin phi, -cos phi)
    _, dz = layout.sinogram_z_mm()
    pos = torch.as_tensor(dz > 0)
    a_side = p_a[..., 0] * torch.sin(phi) - p_a[..., 1] * torch.cos(phi)
    assert (a_side[pos] > 0).all()
    assert (p_a[pos][..., 2] < p_b[pos][..., 2]).all()
    # STIR's non-arc-corrected sampling (ProjDataInfoCylindricalNoArcCorr::get_s): s = R sin(k * pi / N),
    # bins half a crystal angle apart whatever the scanner's (arc-corrected) default bin size
    sc = layout.scanner
    k = 100
    expected = sc.effective_radius_mm * np.sin(k * np.pi / sc.detectors_per_ring)
    assert layout.tangential_positions_mm()[layout.num_tangential // 2 + k] == pytest.approx(expected)


def test_tangential_bins_are_detector_pairs_half_a_crystal_apart():
    """Each bin's LOR end points sit on the crystals the list-mode binning assigns to it.

    End point angle = (detector - parity / 2) x crystal angle, ``parity = (N/2 - k) mod 2`` (the
    interleaved bins lie half a crystal between two pairs). On ``test-3d`` the default bin size
    (4 mm) differs from ``R pi / N`` (4.09 mm) by 2.3 %: a sampling of ``k b / R`` misses the crystals.
    """
    sc = get_scanner("test-3d")
    layout = SinogramLayout(sc)
    p_a, p_b = layout.lor_endpoints()
    det_a, det_b = layout.transaxial_crystal_pairs()  # (view_mashing = 1, views, tangential)
    parity = (sc.detectors_per_ring // 2 - layout.tangential_indices()) % 2
    for p, det in ((p_a, det_a), (p_b, det_b)):
        angle = np.arctan2(p[0, ..., 1].numpy(), p[0, ..., 0].numpy())
        expected = (det[0] - parity[None, :] / 2) * sc.crystal_angle_rad
        assert np.abs(np.angle(np.exp(1j * (angle - expected)))).max() < 1e-9


def test_explicit_tangential_bins_up_to_the_scanner_default():
    mmr = get_scanner("mMR")
    assert SinogramLayout(mmr, num_tangential_bins=344).num_tangential == 344
    with pytest.raises(ValueError, match="num_tangential_bins"):
        SinogramLayout(mmr, num_tangential_bins=600)
