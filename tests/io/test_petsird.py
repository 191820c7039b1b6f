"""PETSIRD list-mode: files written with the petsird package read back into the same sinogram bins."""

import numpy as np
import pytest
import torch

from petuq_sirf.io.petsird_io import (
    CrystalPairBinner,
    PetsirdInfo,
    read_petsird,
    scanner_from_petsird,
    write_petsird,
)
from petuq_sirf.scanner import SinogramLayout, get_scanner
from petuq_sirf.simulation import events_from_counts


def _counts(layout, seed=0, rate=0.3):
    rng = np.random.default_rng(seed)
    prompts = torch.as_tensor(rng.poisson(rate, layout.shape)).float()
    delayeds = torch.as_tensor(rng.poisson(rate / 6, layout.shape)).float()
    return prompts, delayeds, events_from_counts(prompts, delayeds, 0.04, rng)


def test_petsird_round_trip_bins_exactly(tmp_path, layout_3d):
    prompts, delayeds, ev = _counts(layout_3d)
    path = write_petsird(tmp_path / "scan.petsird", ev, layout_3d, time_block_ms=5)
    info = PetsirdInfo(layout_3d.scanner)
    back = read_petsird(path, layout_3d, info)
    assert info.prompts == prompts.sum() and info.delayeds == delayeds.sum() and info.dropped == 0
    assert torch.equal(back.histogram(prompts=True), prompts)
    assert torch.equal(back.histogram(prompts=False), delayeds)
    np.testing.assert_array_equal(np.sort(back.times_ms), np.sort(np.floor(ev.times_ms / 5) * 5))
    assert info.time_blocks == 8


def test_petsird_with_intrinsic_tilt_and_inferred_scanner(tmp_path):
    scanner = get_scanner("test-2d").with_(name="tilted", intrinsic_tilt_deg=-5.021)
    layout = SinogramLayout(scanner)
    prompts, _, ev = _counts(layout, seed=1, rate=0.5)
    path = write_petsird(tmp_path / "tilted.petsird", ev, layout)
    assert torch.equal(read_petsird(path, layout).histogram(), prompts)
    # without a layout, the scanner is inferred from the file (span 1, all ring differences)
    inferred = read_petsird(path)
    assert inferred.data_shape == (1, 64, 64)
    import petsird

    with petsird.BinaryPETSIRDReader(str(path)) as reader:
        header = reader.read_header()
        for _ in reader.read_time_blocks():
            pass
    sc = scanner_from_petsird(header)
    assert (sc.num_rings, sc.detectors_per_ring) == (1, 128)
    # the tilt is only identifiable modulo one crystal angle (detector numbering is arbitrary)
    step = 360.0 / 128
    assert abs(sc.intrinsic_tilt_deg) <= step / 2
    assert (sc.intrinsic_tilt_deg + 5.021) / step == pytest.approx(
        round((sc.intrinsic_tilt_deg + 5.021) / step), abs=1e-3
    )


def test_petsird_geometry_mismatch_is_an_error(tmp_path, layout_3d):
    _, _, ev = _counts(layout_3d, seed=2)
    path = write_petsird(tmp_path / "scan.petsird", ev, layout_3d)
    other = SinogramLayout(layout_3d.scanner.with_(detectors_per_ring=100), span=3, max_ring_difference=2)
    with pytest.raises(ValueError, match="do not match"):
        read_petsird(path, other)
    with pytest.raises(FileNotFoundError):
        read_petsird(tmp_path / "missing.petsird", layout_3d)


def test_crystal_pair_binner_is_symmetric(layout_3d):
    binner = CrystalPairBinner(layout_3d)
    rng = np.random.default_rng(3)
    n, R, N = 500, layout_3d.scanner.num_rings, layout_3d.scanner.detectors_per_ring
    r1, r2, d1, d2 = rng.integers(0, R, n), rng.integers(0, R, n), rng.integers(0, N, n), rng.integers(0, N, n)
    np.testing.assert_array_equal(binner(r1, d1, r2, d2), binner(r2, d2, r1, d1))
