"""Real Siemens mMR header variants: ``.l.hdr`` and STIR's ``.l.hdr.STIR``, span-1 addresses with a
span-11 ``%segment table``, time frames, ``!name of data file``; and path containment of the data file."""

import json
import shutil

import numpy as np
import pytest
import torch

from petuq_sirf.cli.main import main
from petuq_sirf.io.acquisition_folder import load_acquisition
from petuq_sirf.io.mmr_listmode import (
    MMRListmodeError,
    bin_mmr_listmode,
    is_mmr_header,
    read_mmr_header,
    write_mmr_listmode,
)
from petuq_sirf.scanner import SinogramLayout, get_scanner
from petuq_sirf.simulation import events_from_counts


@pytest.fixture(scope="module")
def mmr_scan(tmp_path_factory):
    """A span-1 mMR file (segment 0 and +-1..5 only) and its events, binned to span 11 / ring difference 5."""
    folder = tmp_path_factory.mktemp("mmr")
    layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=5)
    rng = np.random.default_rng(0)
    n = 30_000
    prompts = np.zeros(layout.num_bins)
    np.add.at(prompts, rng.integers(0, layout.num_bins, n), 1)
    delayeds = np.zeros(layout.num_bins)
    np.add.at(delayeds, rng.integers(0, layout.num_bins, n // 5), 1)
    ev = events_from_counts(
        torch.as_tensor(prompts.reshape(layout.shape)).float(),
        torch.as_tensor(delayeds.reshape(layout.shape)).float(),
        4.0,
        rng,
    )
    hdr = write_mmr_listmode(folder / "scan.l.hdr", ev, layout, file_span=1)
    return folder, hdr, layout, ev


def _variant(src_hdr, dest, edit):
    """Copy the header (and data file) under ``dest`` with ``edit(text) -> text`` applied."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = src_hdr.read_text()
    data = src_hdr.with_name(src_hdr.name[: -len(".hdr")])
    if data.resolve() != (dest.parent / data.name).resolve():
        shutil.copy(data, dest.parent / data.name)
    dest.write_text(edit(text))
    return dest


def _set(text, key, value):
    lines = [line for line in text.splitlines() if not line.lower().lstrip("!%").startswith(key.lower().lstrip("!%"))]
    end = (
        next(i for i, line in enumerate(lines) if "END OF INTERFILE" in line.upper())
        if any("END OF INTERFILE" in line.upper() for line in lines)
        else len(lines)
    )
    return "\n".join(lines[:end] + [f"{key}:={value}"] + lines[end:]) + "\n"


def _span11_table(text):
    # as real span-1 mMR headers do: the span-11 lengths of the scanner's sinograms in %segment table
    text = _set(text, "%number of segments", "11")
    return _set(text, "%segment table", "{127,115,115,93,93,71,71,49,49,27,27}")


VARIANTS = {
    "l.hdr": ("scan.l.hdr", lambda t: t),
    "l.hdr.STIR": ("scan.l.hdr.STIR", lambda t: t),
    "span1+span11 table": ("scan.l.hdr.STIR", lambda t: _set(_span11_table(t), "%maximum ring difference", "60")),
    "frames": (
        "scan.l.hdr",
        lambda t: _set(
            _set(_set(t, "number of time frames", "2"), "image duration (sec)[1]", "1"), "image duration (sec)[2]", "3"
        ),
    ),
    "!name of data file": ("scan.l.hdr", lambda t: t.replace("name of data file:=", "!name of data file:=")),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_header_variants_round_trip(mmr_scan, tmp_path, variant):
    _, hdr, layout, ev = mmr_scan
    name, edit = VARIANTS[variant]
    path = _variant(hdr, tmp_path / name, edit)
    assert is_mmr_header(path)
    header = read_mmr_header(path)
    assert header.span == 1 and header.scanner.name == "Siemens mMR"
    prompts, delayeds = bin_mmr_listmode(header, layout, progress=False)
    assert torch.equal(prompts, ev.histogram(prompts=True)) and torch.equal(delayeds, ev.histogram(prompts=False))
    if variant == "span1+span11 table":
        assert header.table_span == 11 and header.max_ring_difference == 60
    if variant == "frames":
        assert header.frames_s == ((0.0, 1.0), (1.0, 4.0))
        start, stop = header.frame_ms(2)
        p2, _ = bin_mmr_listmode(header, layout, start, stop, progress=False)
        assert torch.equal(p2, ev.select_time(1000.0, 4000.0).histogram(prompts=True))
        with pytest.raises(MMRListmodeError, match="frame 3 does not exist"):
            header.frame_ms(3)


def test_cli_reads_stir_header_by_frame_streaming(mmr_scan, tmp_path):
    _, hdr, layout, ev = mmr_scan
    path = _variant(
        hdr,
        tmp_path / "scan.l.hdr.STIR",
        lambda t: _set(_set(_span11_table(t), "%maximum ring difference", "60"), "image duration (sec)", "4"),
    )
    out = tmp_path / "acq"
    argv = ["listmode", str(path), "--max-ring-difference", "5", "--frame", "1", "--no-events", "--out", str(out)]
    assert main(argv) == 0
    acq = load_acquisition(out)
    assert acq.layout.shape == layout.shape and acq.listmode is None
    assert torch.equal(acq.prompts, ev.histogram(prompts=True))
    info = json.loads((out / "metrics.json").read_text())
    assert info["format"] == "Siemens PETLINK 32-bit" and info["delayeds"] == ev.num_delayeds


@pytest.mark.parametrize("name", ["../outside.l", "/etc/passwd", "sub/../../outside.l"])
def test_data_file_must_lie_in_the_header_folder(mmr_scan, tmp_path, name):
    _, hdr, _, _ = mmr_scan
    (tmp_path / "outside.l").write_bytes(b"")
    inner = tmp_path / "inner"
    path = _variant(hdr, inner / "scan.l.hdr", lambda t: _set(t, "name of data file", name))
    with pytest.raises(MMRListmodeError, match="outside the header's directory"):
        read_mmr_header(path)
    ok = _variant(hdr, tmp_path / "abs" / "scan.l.hdr", lambda t: t)
    absolute = _variant(ok, ok, lambda t: _set(t, "name of data file", str((ok.parent / "scan.l").resolve())))
    assert read_mmr_header(absolute).data_file == (ok.parent / "scan.l").resolve()  # absolute inside: fine


def test_cli_error_for_outside_data_file_is_one_line(mmr_scan, tmp_path, capsys):
    _, hdr, _, _ = mmr_scan
    path = _variant(hdr, tmp_path / "in" / "scan.l.hdr.STIR", lambda t: _set(t, "name of data file", "../x.l"))
    assert main(["listmode", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("petuq: error:") and "outside the header's directory" in err and "\n" not in err
