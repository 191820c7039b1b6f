"""The end-to-end mMR-style example runs in its quick mode and writes its outputs."""

import json
import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mmr_listmode_pipeline.py"


def test_mmr_listmode_pipeline_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--out", str(tmp_path), "--quick", "--replicates", "3"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["listmode_events"] == metrics["prompts"] + metrics["delayeds"] > 0
    assert abs(metrics["randoms_estimate"] - metrics["delayeds"]) < 0.01 * metrics["delayeds"]
    assert metrics["scatter_estimate"] > 0 and 0 < metrics["bootstrap_cv_background"] < 1
    for name in ("scan.l.hdr", "scan.l", "osem.nii.gz", "bootstrap_std.nii.gz", "uncertainty.png"):
        assert (tmp_path / name).is_file()
