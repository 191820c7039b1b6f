"""``benchmarks/roi_calibration_cli.py``: the ROI and voxel calibration protocol through the ``petuq`` commands."""

from __future__ import annotations

import json
import sys


def test_cli_benchmark_calibrates_tests_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import roi_calibration_cli

    work = tmp_path / "w"
    argv = ["roi_calibration_cli.py", "--work", str(work), "--calibration", "7", "--test", "2", "--replicates", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    roi_calibration_cli.main()
    result = json.loads((work / "roi_calibration_cli.json").read_text())
    assert result["calibration_rois"] >= 9  # 7 thorax phantoms with 1-3 lesions each
    test = result["test"]["all"]
    lesions = 0
    for k in (100, 101):
        m = json.loads((work / "boot" / f"brain_test_{k}" / "metrics.json").read_text())
        assert m["config"]["estimator"] == "osem" and m["config"]["num_iterations"] == 5
        lesions += len(m["roi_conformal"]["roi"])
    assert test["count"] == lesions > 0 and 0.0 <= test["coverage"] <= 1.0 and test["median_rel_width"] > 0
    assert "calibrated coverage" in capsys.readouterr().out
    voxels = result["voxels"]
    body = 0
    for k in (100, 101):
        v = json.loads((work / "boot" / f"brain_test_{k}" / "metrics.json").read_text())["voxel_conformal"]
        body += v["body_voxels"]
        assert v["calibration_runs"] == 7 and 0.0 <= v["coverage"] <= 1.0 and v["mean_width_over_mean_truth"] > 0
    assert voxels["runs"] == 2 and voxels["body_voxels"] == body
    assert 0.0 <= voxels["raw_coverage"] <= 1.0 and 0.0 <= voxels["coverage"] <= 1.0
    # a second run reuses every acquisition and bootstrap run
    stamp = (work / "boot" / "brain_test_100" / "metrics.json").stat().st_mtime_ns
    roi_calibration_cli.main()
    assert (work / "boot" / "brain_test_100" / "metrics.json").stat().st_mtime_ns == stamp
    # a test run summarised before voxel calibrations existed is summarised again, with no new replicate
    path = work / "boot" / "brain_test_101" / "metrics.json"
    old = json.loads(path.read_text())
    del old["voxel_conformal"]
    path.write_text(json.dumps(old))
    roi_calibration_cli.main()
    again = json.loads(path.read_text())
    assert "voxel_conformal" in again and again["new_replicates"] == 0
