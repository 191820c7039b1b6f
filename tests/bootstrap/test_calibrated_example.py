"""``examples/calibrated_bootstrap.py`` runs in its quick mode: calibrations fitted, applied to a held-out family."""

import json
import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "calibrated_bootstrap.py"


def test_calibrated_bootstrap_example_quick(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--out", str(tmp_path), "--quick"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["level"] == 0.5 and summary["calibration_phantoms"] == 3 and summary["calibration_lesions"] >= 1
    # the calibration families are taken in turn
    assert summary["calibration_families"] == ["thorax", "texture"]
    assert sorted(p.name for p in (tmp_path / "boot").iterdir() if "_cal_" in p.name) == [
        "texture_cal_0",
        "thorax_cal_0",
        "thorax_cal_1",
    ]
    # the class-conformal voxel intervals widen the under-covering raw ones on the held-out brain
    assert summary["voxels_calibrated_coverage"] > summary["voxels_raw_coverage"]
    assert 0.5 < summary["voxels_std_calibrated_over_rmse"] < 2.0
    assert summary["lesions"] and all(lo <= hi for lo, hi in (v["interval"] for v in summary["lesions"].values()))
    run = tmp_path / "boot" / "brain_test_0"
    for name in ("lower_0.50_calibrated.nii.gz", "upper_0.50_calibrated.nii.gz", "std_calibrated.nii.gz"):
        assert (run / name).is_file()
    assert (run / "bootstrap.png").is_file()
