"""``benchmarks/roi_calibration_cli.py``: the ROI and voxel calibration protocol through the ``petuq`` commands."""

from __future__ import annotations

import json
import sys

import pytest


def test_cli_benchmark_calibrates_tests_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import roi_calibration_cli

    work = tmp_path / "w"
    argv = ["roi_calibration_cli.py", "--work", str(work), "--calibration", "4", "--test", "2", "--replicates", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--calibration-family", "thorax,texture"])
    roi_calibration_cli.main()
    result = json.loads((work / "roi_calibration_cli.json").read_text())
    # 4 phantoms of each calibration family, each with 1-3 lesions
    for family in ("thorax", "texture"):
        assert sorted(p.name for p in (work / "boot").glob(f"{family}_calibration_*")) == [
            f"{family}_calibration_{k}" for k in range(100, 104)
        ]
    assert result["calibration_rois"] >= 8
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
        assert v["calibration_runs"] == 8 and 0.0 <= v["coverage"] <= 1.0 and v["mean_width_over_mean_truth"] > 0
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
    # a run summarised with other calibration folders (copied from another work folder) is summarised again
    config_path = work / "boot" / "brain_test_100" / "run_config.json"
    config = json.loads(config_path.read_text())
    config["options"]["voxel_calibration"] = "/elsewhere/voxel_calibration"
    config_path.write_text(json.dumps(config))
    roi_calibration_cli.main()
    metrics_path = work / "boot" / "brain_test_100" / "metrics.json"
    assert metrics_path.stat().st_mtime_ns != stamp and json.loads(metrics_path.read_text())["new_replicates"] == 0
    assert json.loads(config_path.read_text())["options"]["voxel_calibration"] == str(work / "voxel_calibration")


def test_cli_benchmark_refuses_the_test_family_in_calibration(tmp_path, monkeypatch) -> None:
    from benchmarks import roi_calibration_cli

    argv = ["roi_calibration_cli.py", "--work", str(tmp_path), "--calibration-family", "thorax,brain"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="also a calibration family"):
        roi_calibration_cli.main()
    assert not (tmp_path / "acq").exists()
