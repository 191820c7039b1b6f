"""STIR's lm_to_projdata_bootstrap path: parameter file always; the distribution check only with STIR.

One wrapper (``backends.stir_backend.lm_to_projdata_bootstrap``) writes the parameter file;
``bootstrap.stir`` calls it.
"""

from __future__ import annotations

import numpy as np
import pytest

from petuq_sirf.bootstrap import BootstrapConfig, replicate_int_seed
from petuq_sirf.bootstrap.stir import stir_bootstrap_executable, stir_bootstrap_sinogram, write_bootstrap_par
from petuq_sirf.bootstrap.weights import draw_weights, replicate_rng


def test_par_file_has_the_lm_to_projdata_keys_and_the_seed(tmp_path):
    par = write_bootstrap_par(
        tmp_path / "b.par", tmp_path / "lm.l.hdr", tmp_path / "t.hs", tmp_path / "out", 1234, tmp_path / "f.fdef"
    )
    text = par.read_text()
    assert text.startswith("LmToProjDataBootstrap Parameters:=")  # STIR's start key of the bootstrap class
    for line in (
        f"input file := {(tmp_path / 'lm.l.hdr').resolve()}",
        "template_projdata :=",
        "frame_definition file :=",
        "output filename prefix :=",
        "Store prompts := 1",
        "Store delayeds := 0",
    ):
        assert line in text
    assert "seed := 1234" in text and text.rstrip().endswith("END :=")
    for bad in (-1, 0, 2**31):  # STIR: "Seed needs to be non-zero"; 31-bit
        with pytest.raises(ValueError, match="1 .. 2"):
            write_bootstrap_par(tmp_path / "c.par", "lm", "t", "o", bad, "f")
    seeds = {replicate_int_seed(BootstrapConfig().seed, b) for b in range(100)}
    assert len(seeds) == 100 and all(1 <= s < 2**31 for s in seeds)


def test_one_parameter_file_writer():
    from petuq_sirf.backends import stir_backend
    from petuq_sirf.bootstrap import stir as boot_stir

    assert boot_stir.write_bootstrap_par is stir_backend.write_bootstrap_par


def test_missing_executable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert stir_bootstrap_executable() is None
    with pytest.raises(FileNotFoundError, match="lm_to_projdata_bootstrap"):
        stir_bootstrap_sinogram(tmp_path / "lm.l.hdr", tmp_path / "t.hs", 1, tmp_path)


@pytest.mark.skipif(stir_bootstrap_executable() is None, reason="STIR's lm_to_projdata_bootstrap is not on PATH")
def test_stir_and_embedded_resampling_agree_in_distribution(tmp_path):
    """Same list-mode data: STIR's resampling and our Poisson(1) weights give the same per-bin mean and variance."""
    from petuq_sirf.io.interfile import write_projdata
    from petuq_sirf.io.listmode import ListModeEvents
    from petuq_sirf.io.mmr_listmode import write_mmr_listmode
    from petuq_sirf.scanner import SinogramLayout, get_scanner

    layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=5)  # segment 0: 127 sinograms
    rng = np.random.default_rng(0)
    n = 20_000
    bins = rng.integers(0, 2000, n) * 97 % layout.num_bins  # events concentrated on 2000 bins
    events = ListModeEvents(bins, np.sort(rng.uniform(0, 10_000, n)), np.ones(n, bool), layout.shape)
    lm = write_mmr_listmode(tmp_path / "lm.l.hdr", events, layout, file_span=1)  # STIR's ECAT8 reader: span 1
    template = write_projdata(tmp_path / "template.hs", np.zeros(layout.shape, np.float32), layout)
    observed = events.histogram().numpy().ravel()
    reps = 6
    stir = np.stack(
        [
            stir_bootstrap_sinogram(lm, template, replicate_int_seed(0, b), tmp_path / f"r{b}").numpy().ravel()
            for b in range(reps)
        ]
    )
    ours = np.stack(
        [
            np.bincount(bins, weights=draw_weights(n, "poisson", replicate_rng(0, b)), minlength=layout.num_bins)
            for b in range(reps)
        ]
    )
    busy = observed > 0
    assert np.all(stir[:, ~busy] == 0)  # STIR re-draws measured events only
    stats = {}
    for name, sample in (("stir", stir), ("ours", ours)):
        # per bin: mean = observed count, variance = observed count (resampling with replacement)
        mean_ratio = sample[:, busy].mean(0).sum() / observed[busy].sum()
        var_ratio = sample[:, busy].var(0, ddof=1).sum() / observed[busy].sum()
        assert abs(sample.sum(1).mean() / n - 1) < 0.01
        assert abs(mean_ratio - 1) < 0.01, (name, mean_ratio)
        assert abs(var_ratio - 1) < 0.1, (name, var_ratio)
        stats[name] = var_ratio
    assert abs(stats["stir"] - stats["ours"]) < 0.12
