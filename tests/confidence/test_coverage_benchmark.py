"""The geometry options of ``benchmarks/confidence_coverage.py`` (reduced-ring 3D scanner)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.confidence_coverage import build_geometry, parser
from petuq_sirf.simulation.simulate import geometric_model


def _geometry(*argv: str):
    args = parser().parse_args(list(argv))
    return build_geometry(args.scanner, args.rings, args.num_xy)


def test_rings_option_gives_a_reduced_ring_3d_scanner() -> None:
    layout, image = _geometry("--scanner", "test-3d", "--rings", "4", "--num-xy", "24")
    assert layout.scanner.name == "test-3d-4rings" and layout.scanner.num_rings == 4
    assert image.shape == (7, 24, 24)  # 2 R - 1 planes of half a ring spacing
    assert image.voxel_size_mm == pytest.approx((2.0, 4.0, 4.0))
    # span 1, all ring differences -3..3: 4 + 2 (3 + 2 + 1) = 16 sinograms, 48 views x 48 bins
    assert layout.shape == (16, 48, 48)
    rds = [(s.min_ring_difference, s.max_ring_difference) for s in layout.segments]
    assert rds == [(d, d) for d in range(-3, 4)]
    full_layout, full_image = _geometry("--scanner", "test-3d")
    assert full_layout.scanner.num_rings == 8 and full_image.shape == (15, 48, 48)
    same, _ = _geometry("--scanner", "test-3d", "--rings", "8")
    assert same.scanner.name == "test-3d"


def test_reduced_ring_problem_is_genuinely_3d() -> None:
    """A point in the first plane is seen by oblique sinograms and by no direct sinogram of the far rings."""
    layout, image = _geometry("--scanner", "test-3d", "--rings", "3", "--num-xy", "12")
    model = geometric_model(layout, image, psf_fwhm_mm=0.0)
    x = torch.zeros(image.shape)
    x[0, 6, 6] = 1.0
    per_sinogram = model.geometric(x).sum(dim=(-2, -1))
    segment = torch.as_tensor(layout._sinogram_table["sino_segment"])
    oblique = torch.tensor([layout.segments[int(s)].average_ring_difference != 0 for s in segment])
    assert per_sinogram[oblique].sum() > 0
    assert per_sinogram.sum() > 0 and per_sinogram[~oblique][-1] == 0  # last direct sinogram: ring 2, z = 8 mm


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--scanner", "test-2d", "--rings", "4"), "rings must be in 1..1"),
        (("--scanner", "test-3d", "--rings", "0"), "rings must be in 1..8"),
        (("--scanner", "test-3d", "--rings", "9"), "rings must be in 1..8"),
        (("--scanner", "test-3d", "--num-xy", "0"), "num-xy must be >= 1"),
    ],
)
def test_bad_geometry_options_raise(argv, match) -> None:
    with pytest.raises(ValueError, match=match):
        _geometry(*argv)


def test_benchmark_runs_on_a_reduced_ring_scanner(tmp_path) -> None:
    """``--rings`` reaches the run: a tiny 2-ring (3-plane) case goes through the solver end to end."""
    import json

    from benchmarks.confidence_coverage import main

    argv = [
        "--scanner", "test-3d", "--rings", "2", "--num-xy", "32", "--families", "thorax",
        "--phantoms-per-family", "1", "--realisations", "2", "--frames", "2", "--counts", "1e5",
        "--no-unrolled", "--comparison-realisations", "0", "--ml-iterations", "5", "--inner-iterations", "2",
        "--map-iterations", "1", "--out", str(tmp_path), "--name", "tiny3d",
    ]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "tiny3d.json").read_text())
    assert saved["scanner"] == "test-3d-2rings"
    assert saved["image_shape"] == [3, 32, 32] and saved["sinogram_shape"] == [4, 48, 48]
    assert saved["ring_differences"] == [-1, 1] and saved["voxel_size_mm"] == pytest.approx([2.0, 4.0, 4.0])
    rec = saved["records"][0]
    n_rois = len(rec["rois"])
    assert rec["estimators"] == ["osem", "map-rdp", "bad-constant"]
    assert len(rec["covered_running_all_frames"]) == 2  # realisations
    assert [len(row) for row in rec["covered_running_all_frames"][0]] == [n_rois] * 3
    assert saved["cpu_s_total"] > 0 and (tmp_path / "tiny3d.png").is_file()
    assert main(["--replot", str(tmp_path / "tiny3d.json")]) == 0  # the figure is redrawn from the JSON


def test_projector_timing_on_the_reduced_ring_geometry() -> None:
    from benchmarks.confidence_coverage import projector_timing

    layout, image = _geometry("--scanner", "test-3d", "--rings", "2", "--num-xy", "16")
    rows = projector_timing(layout, image, "thorax", batches=(1, 3))
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(r["wall_s"] > 0 and r["cpu_s"] >= 0 for r in rows)


def test_benchmark_takes_a_named_unrolled_network(tmp_path) -> None:
    """``--unrolled-weights fbsem16`` (not the default): that network is the unrolled estimator, and the record names
    its file."""
    import hashlib
    import json

    from benchmarks.confidence_coverage import main
    from petuq_sirf.recon.weights import SHIPPED_NAMED

    argv = [
        "--families", "thorax", "--num-xy", "32", "--phantoms-per-family", "1", "--realisations", "1",
        "--frames", "2", "--counts", "1e5", "--comparison-realisations", "0", "--mixing-draws", "2",
        "--ml-iterations", "5", "--inner-iterations", "2", "--map-iterations", "1",
        "--unrolled-weights", "fbsem16", "--out", str(tmp_path), "--name", "named",
    ]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "named.json").read_text())
    expected = SHIPPED_NAMED["fbsem16"] / "model.safetensors"
    assert saved["unrolled_weights_file"].endswith("unrolled_test2d/model.safetensors")
    assert saved["unrolled_weights_sha256"] == hashlib.sha256(expected.read_bytes()).hexdigest()
    assert "unrolled" in saved["records"][0]["estimators"]


def test_stop_rule_target_above_two_is_refused() -> None:
    """width / midpoint of a non-negative interval is at most 2: a larger target would stop every run at once."""
    from benchmarks.confidence_coverage import main

    with pytest.raises(ValueError, match=r"--stop-relative-width must be in \(0, 2\]"):
        main(["--stop-relative-width", "3", "--families", "thorax", "--realisations", "1"])
