import numpy as np
import pytest

from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.io.interfile import InterfileError, read_projdata, write_projdata
from petuq_sirf.io.interfile import read_image as read_hv
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.sirf_data import load_sirf_phantom


@pytest.mark.parametrize("suffix", [".hv", ".nii", ".nii.gz", ".npz"])
def test_image_round_trip(tmp_path, suffix):
    geom = ImageGeometry((3, 4, 5), (2.0, 1.5, 1.25), (1.0, -2.0, 3.0))
    arr = np.random.default_rng(0).random(geom.shape).astype(np.float32)
    path = write_image(tmp_path / f"img{suffix}", arr, geom)
    back, g2 = read_image(path)
    np.testing.assert_array_equal(back, arr)
    assert g2.shape == geom.shape
    np.testing.assert_allclose(g2.voxel_size_mm, geom.voxel_size_mm, rtol=1e-5)
    np.testing.assert_allclose(g2.offset_mm, geom.offset_mm, atol=1e-4)


def test_projdata_round_trip(tmp_path):
    layout = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=4, view_mashing=2)
    arr = np.random.default_rng(1).random(layout.shape).astype(np.float32)
    path = write_projdata(tmp_path / "sino.hs", arr, layout)
    pd = read_projdata(path)
    np.testing.assert_array_equal(pd.array, arr)
    assert pd.layout == layout


def test_projdata_view_major_storage_order(tmp_path):
    """STIR's segment/view/axial order (the mMR template) is reordered into sinograms."""
    layout = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=4)
    arr = np.random.default_rng(2).random(layout.shape).astype(np.float32)
    hs = write_projdata(tmp_path / "s.hs", arr, layout)
    text = hs.read_text()
    sizes = layout.sinograms_per_segment
    text = text.replace("matrix axis label [3] := axial coordinate", "matrix axis label [3] := view")
    text = text.replace(
        f"!matrix size [3] := {{ {','.join(map(str, sizes))}}}", f"!matrix size [3] := {layout.num_views}"
    )
    text = text.replace("matrix axis label [2] := view", "matrix axis label [2] := axial coordinate")
    text = text.replace(
        f"!matrix size [2] := {layout.num_views}", f"!matrix size [2] := {{ {','.join(map(str, sizes))}}}"
    )
    hs.write_text(text)
    blocks, start = [], 0
    for n in sizes:
        blocks.append(arr[start : start + n].transpose(1, 0, 2).ravel())
        start += n
    np.concatenate(blocks).astype("<f4").tofile(tmp_path / "s.s")
    np.testing.assert_array_equal(read_projdata(hs).array, arr)


def test_clear_errors_for_broken_files(tmp_path):
    layout = SinogramLayout(get_scanner("test-2d"))
    path = write_projdata(tmp_path / "a.hs", np.ones(layout.shape, np.float32), layout)
    data = path.with_suffix(".s")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InterfileError, match="too short"):
        read_projdata(path)
    data.unlink()
    with pytest.raises(InterfileError, match="does not exist"):
        read_projdata(path)
    path.write_text(path.read_text().replace("name of data file := a.s", "name of data file := ../../etc/passwd"))
    with pytest.raises(InterfileError, match="outside the header's directory"):
        read_projdata(path)
    bad = tmp_path / "tof.hs"
    bad.write_text("!INTERFILE :=\nnumber of time frames := 3\n")
    with pytest.raises(InterfileError, match="number of time frames"):
        read_projdata(bad)
    with pytest.raises(InterfileError, match="not an Interfile header"):
        (tmp_path / "x.hv").write_text("hello")
        read_hv(tmp_path / "x.hv")


def test_mmr_template_header_gives_the_mmr_layout(shared_data):
    # Header only: the data file is absent, which must be a clear error.
    with pytest.raises(InterfileError, match="does not exist"):
        read_projdata(shared_data / "mMR_template_span11.hs")


def test_reads_shared_brain_and_thorax(shared_data):
    brain = read_hv(shared_data / "brain" / "emission.hv")
    assert brain.array.shape == (15, 211, 211)
    assert brain.geometry.voxel_size_mm == (6.75, 1.0, 1.0)
    assert brain.array.max() > 0
    mu = read_hv(shared_data / "brain" / "attenuation.hv")
    assert 0.05 < mu.array.max() < 0.3  # 1/cm
    thorax = load_sirf_phantom("thorax", root=shared_data)
    assert thorax.activity.shape == (1, 155, 155)
    assert thorax.mu_per_cm.max() < 0.3


def test_interfile_images_use_stirs_axial_origin_when_given_a_scanner(tmp_path):
    from petuq_sirf.io.interfile import parse_header

    scanner = get_scanner("mMR")
    geom = ImageGeometry((127, 5, 5), (2.03125, 2.0, 2.0))  # centred on the scanner
    arr = np.zeros(geom.shape, np.float32)
    path = write_image(tmp_path / "img.hv", arr, geom, scanner)
    # STIR puts z = 0 at the first ring: our centred 127-slice image starts there
    assert float(parse_header(path)["first pixel offset (mm) [3]"]) == pytest.approx(0.0, abs=1e-4)
    _, back = read_image(path, scanner)
    assert back.offset_mm[0] == pytest.approx(0.0, abs=1e-4)
    _, raw = read_image(path)  # without a scanner the file's own coordinates are kept
    assert raw.offset_mm[0] == pytest.approx(63 * 2.03125, abs=1e-3)


def test_projdata_header_carries_the_scanners_energy_window(tmp_path):
    """STIR's scatter simulation refuses templates without an energy window; the mMR's is written (430-610 keV)."""
    mmr = get_scanner("mMR").with_(num_rings=2)
    layout = SinogramLayout(mmr, span=1, view_mashing=4)
    path = write_projdata(tmp_path / "mmr.hs", np.zeros(layout.shape, np.float32), layout)
    text = path.read_text()
    assert "energy window lower level[1] := 430" in text
    assert "energy window upper level[1] := 610" in text
    assert "Energy resolution := 0.145" in text
    back = read_projdata(path).layout.scanner  # a user-defined (2-ring) mMR: rebuilt from the header's keys
    assert (back.energy_resolution, back.reference_energy_kev, back.energy_window_kev) == (0.145, 511.0, (430.0, 610.0))
    unknown = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=4)  # no window: no keys
    assert (
        "energy window"
        not in write_projdata(tmp_path / "t.hs", np.zeros(unknown.shape, np.float32), unknown).read_text()
    )


def test_scanner_energy_fields_are_validated():
    with pytest.raises(ValueError, match="energy window"):
        get_scanner("mMR").with_(energy_window_kev=(610.0, 430.0))
    with pytest.raises(ValueError, match="energy resolution"):
        get_scanner("mMR").with_(energy_resolution=1.5)
