"""``petuq listmode``: mMR PETLINK and PETSIRD files become acquisition folders that ``petuq reconstruct`` reads."""

import json

import numpy as np
import pytest
import torch

from petuq_sirf.cli.main import main
from petuq_sirf.io.acquisition_folder import load_acquisition
from petuq_sirf.io.mmr_listmode import write_mmr_listmode
from petuq_sirf.io.petsird_io import write_petsird
from petuq_sirf.scanner import SinogramLayout, get_scanner
from petuq_sirf.simulation import events_from_counts


@pytest.fixture(scope="module")
def scan():
    layout = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=2, view_mashing=2)
    rng = np.random.default_rng(0)
    prompts = torch.as_tensor(rng.poisson(0.2, layout.shape)).float()
    delayeds = torch.as_tensor(rng.poisson(0.05, layout.shape)).float()
    return layout, prompts, delayeds, events_from_counts(prompts, delayeds, 2.0, rng)


def test_mmr_listmode_to_folder_and_reconstruct(tmp_path, scan):
    layout, prompts, delayeds, ev = scan
    hdr = write_mmr_listmode(tmp_path / "scan.l.hdr", ev, layout, file_span=1)  # "!originating system := test-3d"
    folder = tmp_path / "acq"
    args = ["listmode", str(hdr), "--span", "3", "--max-ring-difference", "2", "--view-mashing", "2"]
    assert main(args + ["--image-size", "24", "--voxel-size-mm", "8", "--out", str(folder)]) == 0
    acq = load_acquisition(folder)
    assert acq.layout.shape == layout.shape
    assert torch.equal(acq.prompts, prompts) and torch.equal(acq.delayeds, delayeds)
    assert acq.listmode is not None and len(acq.listmode) == len(ev)
    assert acq.randoms_estimate.sum() == pytest.approx(float(delayeds.sum()), rel=0.02)
    assert (
        main(["reconstruct", str(folder), "--iterations", "1", "--subsets", "2", "--out", str(tmp_path / "rec")]) == 0
    )
    assert (tmp_path / "rec" / "image.nii.gz").is_file()
    # a time window keeps only its events
    part = tmp_path / "part"
    assert main(args + ["--start-s", "0.5", "--stop-s", "1.0", "--image-size", "24", "--out", str(part)]) == 0
    info = json.loads((part / "metrics.json").read_text())
    expected = ev.select_time(500.0, 1000.0)
    assert info["prompts"] == expected.num_prompts and info["delayeds"] == expected.num_delayeds


def test_petsird_to_folder(tmp_path, scan):
    layout, prompts, _, ev = scan
    path = write_petsird(tmp_path / "scan.petsird", ev, layout, time_block_ms=100)
    folder = tmp_path / "acq"
    args = ["listmode", str(path), "--scanner", "test-3d", "--span", "3", "--max-ring-difference", "2"]
    assert main(args + ["--view-mashing", "2", "--image-size", "24", "--out", str(folder)]) == 0
    assert torch.equal(load_acquisition(folder).prompts, prompts)


def test_listmode_errors_are_one_line(tmp_path, capsys):
    assert main(["listmode", str(tmp_path / "missing.l.hdr"), "--out", str(tmp_path / "o")]) == 2
    assert "petuq: error:" in capsys.readouterr().err
