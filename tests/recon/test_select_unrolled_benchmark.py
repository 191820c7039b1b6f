"""``benchmarks/select_unrolled.py``: the network choice on calibration seeds of the chosen families, never the held-out one."""

from __future__ import annotations

import json
import sys

import pytest


def test_select_unrolled_scores_each_family_and_dose(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import select_unrolled

    out = tmp_path / "sel.json"
    argv = ["select_unrolled.py", "--candidate", "a=fbsem32", "--candidate", "b=fbsem16", "--families", "texture"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--phantoms", "1", "--doses", "0.05,1.0", "--samples", "2", "--json", str(out)]
    )
    select_unrolled.main()
    table = json.loads(out.read_text())
    for name in ("a", "b"):
        row = table[name]
        assert 0 < row["texture 0.05"] < 1 and 0 < row["texture 1"] < 1
        assert row["mean"] == pytest.approx((row["texture 0.05"] + row["texture 1"]) / 2)
        assert not any(k.startswith("thorax") or k.startswith("ellipses") for k in row)
    assert table["a"]["texture 0.05"] != table["b"]["texture 0.05"]  # two networks, two scores
    assert "| a |" in capsys.readouterr().out


def test_select_unrolled_refuses_the_held_out_family(monkeypatch, capsys) -> None:
    from benchmarks import select_unrolled

    monkeypatch.setattr(sys, "argv", ["select_unrolled.py", "--candidate", "a=fbsem32", "--families", "thorax,brain"])
    with pytest.raises(SystemExit) as exit_info:
        select_unrolled.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "brain is held out" in err[-1], err


def test_select_unrolled_interval_score_of_the_mondrian_interval(tmp_path, monkeypatch, capsys) -> None:
    """The interval-score table: one score per candidate, family and dose; at full dose the refined candidate's mean
    differs, and so does its score; the held-out family is refused as a calibration family too."""
    from benchmarks import select_unrolled

    out = tmp_path / "sel.json"
    argv = ["select_unrolled.py", "--candidate", "a=fbsem32w", "--families", "texture", "--phantoms", "1"]
    argv += ["--doses", "1.0", "--samples", "2", "--interval-score", "--calibration-phantoms", "1"]
    argv += ["--calibration-families", "thorax", "--realisations", "2", "--refined-too", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    select_unrolled.main()
    table = json.loads(out.read_text())
    plain, refined = table["a"]["interval score texture 1"], table["a + discrepancy EM"]["interval score texture 1"]
    assert 0 < plain < 5 and 0 < refined < 5 and plain != refined
    assert "interval score" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--calibration-families", "brain"])
    with pytest.raises(SystemExit):
        select_unrolled.main()
    assert "brain is held out" in capsys.readouterr().err
