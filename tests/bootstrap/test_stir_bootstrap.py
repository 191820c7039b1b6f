"""STIR's lm_to_projdata_bootstrap path: parameter file always; the distribution check only with STIR."""

from __future__ import annotations

import numpy as np
import pytest

from petuq_sirf.bootstrap import BootstrapConfig, replicate_int_seed
from petuq_sirf.bootstrap.stir import stir_bootstrap_executable, stir_bootstrap_sinogram, write_bootstrap_par
from petuq_sirf.bootstrap.weights import draw_weights, replicate_rng


def test_par_file_has_the_lm_to_projdata_keys_and_the_seed(tmp_path):
    par = write_bootstrap_par(tmp_path / "b.par", tmp_path / "lm.l.hdr", tmp_path / "t.hs", tmp_path / "out", seed=1234)
    text = par.read_text()
    assert text.startswith("lm_to_projdata Parameters:=")
    for line in ("template_projdata :=", "output filename prefix :=", "Store prompts := 1", "Store delayeds := 0"):
        assert line in text
    assert "seed := 1234" in text and text.rstrip().endswith("END:=")
    with pytest.raises(ValueError, match="31-bit"):
        write_bootstrap_par(tmp_path / "c.par", "lm", "t", "o", seed=-1)
    seeds = {replicate_int_seed(BootstrapConfig().seed, b) for b in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**31 for s in seeds)


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
    from petuq_sirf.io.mmr_listmode import make_layout, write_mmr_listmode
    from petuq_sirf.scanner import get_scanner

    layout = make_layout(get_scanner("mMR"), 11, 60)
    rng = np.random.default_rng(0)
    n = 20_000
    bins = rng.integers(0, 2000, n) * 97 % layout.num_bins  # events concentrated on 2000 bins
    events = ListModeEvents(bins, np.sort(rng.uniform(0, 10_000, n)), np.ones(n, bool), layout.shape)
    lm = write_mmr_listmode(tmp_path / "lm.l.hdr", events, layout)
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
    for sample in (stir, ours):
        assert abs(sample.sum(1).mean() / n - 1) < 0.01
        assert abs(sample[:, busy].mean(0).sum() / observed[busy].sum() - 1) < 0.01
        assert abs(sample[:, busy].var(0, ddof=1).sum() / observed[busy].sum() - 1) < 0.1
