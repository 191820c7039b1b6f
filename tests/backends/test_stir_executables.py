"""Our mMR list-mode decoder and the bootstrap wrapper against STIR's own executables (skip without STIR)."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from petuq_sirf.backends.stir_backend import lm_to_projdata_bootstrap
from petuq_sirf.io import ListModeEvents
from petuq_sirf.io.interfile import read_projdata, write_projdata
from petuq_sirf.io.mmr_listmode import bin_mmr_listmode, read_mmr_header, write_mmr_listmode
from petuq_sirf.scanner import SinogramLayout, get_scanner

needs_stir = pytest.mark.skipif(
    shutil.which("lm_to_projdata") is None or shutil.which("lm_to_projdata_bootstrap") is None,
    reason="STIR executables (lm_to_projdata, lm_to_projdata_bootstrap) are not on PATH",
)


@pytest.fixture(scope="module")
def mmr_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmr")
    layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=5)  # segment 0: 127 sinograms
    rng = np.random.default_rng(0)
    n = 50_000
    ev = ListModeEvents(
        rng.integers(0, layout.num_bins, n), np.sort(rng.uniform(0, 2000, n)), rng.random(n) < 0.9, layout.shape
    )
    hdr = write_mmr_listmode(folder / "scan.l.hdr", ev, layout, file_span=1, other_tag_every_ms=7)
    return folder, hdr, layout


@needs_stir
def test_stir_lm_to_projdata_bins_our_file_like_we_do(mmr_file):
    folder, hdr, layout = mmr_file
    write_projdata(folder / "template.hs", np.zeros(layout.shape, np.float32), layout)
    (folder / "frames.fdef").write_text("0 0.5\n1 1\n")  # 0.5 s to 1.5 s
    (folder / "lm.par").write_text(
        "lm_to_projdata Parameters:=\ninput file := scan.l.hdr\noutput filename prefix := stir\n"
        "template_projdata := template.hs\nframe_definition file := frames.fdef\n"
        "Store prompts := 1\nStore delayeds := 0\nEND:=\n"
    )
    subprocess.run(["lm_to_projdata", "lm.par"], cwd=folder, check=True, capture_output=True)
    stir = read_projdata(next(folder.glob("stir*.hs"))).array
    ours, _ = bin_mmr_listmode(read_mmr_header(hdr), layout, start_ms=500, stop_ms=1500, progress=False)
    np.testing.assert_array_equal(stir, ours.numpy())


@needs_stir
def test_lm_to_projdata_bootstrap_runs_stir(mmr_file, tmp_path):
    _, hdr, layout = mmr_file
    prompts, _ = bin_mmr_listmode(read_mmr_header(hdr), layout, progress=False)
    a = lm_to_projdata_bootstrap(hdr, layout, seed=1, workdir=tmp_path / "a")
    b = lm_to_projdata_bootstrap(hdr, layout, seed=1, workdir=tmp_path / "b")
    c = lm_to_projdata_bootstrap(hdr, layout, seed=2, workdir=tmp_path / "c")
    frame = lm_to_projdata_bootstrap(hdr, layout, seed=3, workdir=tmp_path / "d" / "e", start_s=0.5, stop_s=1.5)
    in_frame, _ = bin_mmr_listmode(read_mmr_header(hdr), layout, start_ms=500, stop_ms=1500, progress=False)
    assert abs(float(frame.sum()) - float(in_frame.sum())) < 0.05 * float(in_frame.sum())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a > 0) <= (prompts > 0)).all())  # replicates re-draw the measured events
    assert abs(float(a.sum()) - float(prompts.sum())) < 0.02 * float(prompts.sum())
