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
