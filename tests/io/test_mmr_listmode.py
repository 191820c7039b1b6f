"""Siemens mMR 32-bit PETLINK list-mode: encoder/decoder round trip, header errors, exact binning."""

import numpy as np
import pytest
import torch

from petuq_sirf.io import ListModeEvents
from petuq_sirf.io.mmr_listmode import (
    DecodeStats,
    MMRListmodeError,
    bin_mmr_listmode,
    decode_words,
    file_segment_order,
    iter_mmr_events,
    make_layout,
    read_mmr_header,
    read_mmr_listmode,
    write_mmr_listmode,
)
from petuq_sirf.scanner import SinogramLayout, get_scanner
from petuq_sirf.simulation import events_from_counts


def _sorted(ev: ListModeEvents):
    order = np.lexsort((ev.prompt, ev.bins, np.floor(ev.times_ms)))
    return ev.bins[order], np.floor(ev.times_ms[order]), ev.prompt[order]


@pytest.fixture(scope="module")
def small_events(layout_3d):
    rng = np.random.default_rng(3)
    prompts = torch.as_tensor(rng.poisson(0.4, layout_3d.shape)).float()
    delayeds = torch.as_tensor(rng.poisson(0.1, layout_3d.shape)).float()
    return prompts, delayeds, events_from_counts(prompts, delayeds, 1.5, rng)


def test_word_layout_matches_petlink():
    # time tag 5 ms, prompt at address 7, other tag, delayed at address 9, time tag 6, prompt at 3
    words = np.array(
        [0x80000005, 0x40000007, 0xA0000001, 0x00000009, 0x80000006, 0x40000003],
        dtype=np.uint32,
    )
    address, prompt, times, info = decode_words(words, last_time_ms=2)
    assert address.tolist() == [7, 9, 3]
    assert prompt.tolist() == [True, False, True]
    assert times.tolist() == [5, 5, 6]
    assert info["other_tags"] == 1 and info["time_tags"].tolist() == [5, 6]
    _, _, t0, _ = decode_words(np.array([0x40000001], dtype=np.uint32), last_time_ms=42)
    assert t0.tolist() == [42]  # carried over from the previous chunk


def test_file_segment_order_is_stir_sequence():
    # 5 segments ascending (-2, -1, 0, 1, 2) -> file order 0, -1, +1, -2, +2
    assert file_segment_order(5).tolist() == [2, 1, 3, 0, 4]


@pytest.mark.parametrize("file_span", [None, 1])
def test_round_trip_and_exact_binning(tmp_path, layout_3d, small_events, file_span):
    prompts, delayeds, ev = small_events
    hdr = write_mmr_listmode(tmp_path / "scan.l.hdr", ev, layout_3d, file_span=file_span, other_tag_every_ms=40)
    header = read_mmr_header(hdr, scanner=layout_3d.scanner)
    assert header.span == (file_span or layout_3d.span)
    back = read_mmr_listmode(header, layout_3d, chunk_words=997)  # chunks split events from their tags
    assert len(back) == len(ev)
    for a, b in zip(_sorted(ev), _sorted(back)):
        np.testing.assert_array_equal(a, b)
    stats = DecodeStats()
    p, d = bin_mmr_listmode(header, layout_3d, chunk_words=1000, progress=False, stats=stats)
    # the file binned and the simulator's own histograms agree exactly
    assert torch.equal(p, ev.histogram(prompts=True)) and torch.equal(p, prompts)
    assert torch.equal(d, ev.histogram(prompts=False)) and torch.equal(d, delayeds)
    assert stats.prompts == prompts.sum() and stats.delayeds == delayeds.sum() and stats.other_tags > 0


def test_time_interval_selection(tmp_path, layout_3d, small_events):
    _, _, ev = small_events
    hdr = write_mmr_listmode(tmp_path / "scan.l.hdr", ev, layout_3d)
    part = read_mmr_listmode(read_mmr_header(hdr, scanner=layout_3d.scanner), layout_3d, 200, 700, chunk_words=500)
    expected = ev.select_time(200, 700)
    assert len(part) == len(expected) > 0
    assert part.times_ms.min() >= 200 and part.times_ms.max() < 700
    assert torch.equal(part.histogram(), expected.histogram())
    with pytest.raises(ValueError, match="empty"):
        list(iter_mmr_events(read_mmr_header(hdr, scanner=layout_3d.scanner), layout_3d, 5, 5))


def test_mmr_span1_file_bins_into_span11(tmp_path):
    mmr = get_scanner("mMR")
    span11 = SinogramLayout(mmr, span=11, max_ring_difference=60)
    assert span11.shape == (837, 252, 344)
    rng = np.random.default_rng(0)
    n = 20000
    ev = ListModeEvents(
        rng.integers(0, span11.num_bins, n), np.sort(rng.uniform(0, 300, n)), rng.random(n) < 0.8, span11.shape
    )
    hdr = write_mmr_listmode(tmp_path / "mmr.l.hdr", ev, span11, file_span=1)
    header = read_mmr_header(hdr)  # "!originating system := 2008" -> Siemens mMR
    assert header.scanner.name == "Siemens mMR" and header.layout.shape == (4084, 252, 344)
    assert header.segment_table[:3] == (64, 63, 63)
    back = read_mmr_listmode(hdr)  # default target: span 11
    assert back.data_shape == (837, 252, 344)
    for a, b in zip(_sorted(ev), _sorted(back)):
        np.testing.assert_array_equal(a, b)
    # a mashed, narrower target layout re-bins the same events (views // 2, centred tangential crop)
    mashed = make_layout(mmr, 11, 60, view_mashing=2, num_tangential=250)
    p, _ = bin_mmr_listmode(hdr, mashed, progress=False)
    t = ev.bins % 344
    kept = ev.prompt & (t - 172 >= -125) & (t - 172 < 125)
    assert p.sum() == kept.sum()


def _header_text(**changes):
    fields = {
        "!originating system": "2008",
        "name of data file": "x.l",
        "%LM event and tag words format (bits)": "32",
        "%number of TOF time bins": "1",
        "%axial compression": "11",
        "%maximum ring difference": "60",
        "%number of projections": "344",
        "%number of views": "252",
        "%number of segments": "11",
        "%segment table": "{127,115,115,93,93,71,71,49,49,27,27}",
    }
    fields.update(changes)
    return "!INTERFILE:=\n" + "\n".join(f"{k}:={v}" for k, v in fields.items() if v is not None) + "\n"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"%LM event and tag words format (bits)": "64"}, "only 32-bit"),
        ({"%number of TOF time bins": "13"}, "TOF list-mode is not supported"),
        ({"!originating system": "1104x"}, "originating system"),
        ({"%number of views": "126"}, "number of views"),
        ({"%segment table": "{127,115,115,93,93,71,71,49,49,27,28}"}, "matches no span"),
        ({"%number of segments": "9"}, "number of segments"),
        ({"%segment table": None}, "segment table"),
        ({"name of data file": None}, "name of data file"),
        ({"imagedata byte order": "PDP"}, "byte order"),
        ({"%axial compression": "4"}, "span"),
    ],
)
def test_header_errors_name_the_field(tmp_path, changes, message):
    (tmp_path / "x.l").write_bytes(b"")
    hdr = tmp_path / "x.l.hdr"
    hdr.write_text(_header_text(**changes))
    with pytest.raises(MMRListmodeError, match=message):
        read_mmr_header(hdr)


def test_good_header_and_bad_address(tmp_path):
    (tmp_path / "x.l").write_bytes(np.array([0x80000000, 0x7FFFFFFF], dtype="<u4").tobytes())
    hdr = tmp_path / "x.l.hdr"
    hdr.write_text(_header_text())
    h = read_mmr_header(hdr)
    assert h.layout.shape == (837, 252, 344) and h.num_words == 2
    with pytest.raises(MMRListmodeError, match="header does not describe this data file"):
        read_mmr_listmode(h)
    with pytest.raises(FileNotFoundError):
        read_mmr_header(tmp_path / "missing.l.hdr")
