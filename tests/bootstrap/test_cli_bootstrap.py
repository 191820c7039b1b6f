"""``petuq bootstrap`` end to end: outputs, resume, clear errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from petuq_sirf.cli.main import main


def test_bootstrap_command_writes_outputs_and_resumes(tmp_path, capsys):
    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "1e5", "--listmode", "--out", str(acq)]) == 0
    out = tmp_path / "boot"
    argv = ["bootstrap", str(acq), "--replicates", "4", "--iterations", "3", "--full-data-iterations", "5"]
    argv += ["--weights", "poisson", "--scheduler", "none", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicates"] == 4 and metrics["new_replicates"] == 4
    assert set(metrics["coverage_quantile_intervals"]) >= {"0.50", "0.90"}
    assert 0 <= metrics["coverage_quantile_intervals"]["0.90"] <= 1
    assert "calibration_error" in metrics["gaussian"]
    bg = metrics["roi"]["background"]
    assert bg["interval_0.90"][0] <= bg["mean"] <= bg["interval_0.90"][1] and "truth" in bg
    for name in ("mean", "std", "median", "lower_0.90", "upper_0.90", "full_data_map"):
        arr = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj)
        assert np.isfinite(arr).all() and arr.size == 64 * 64
    assert (out / "bootstrap.png").stat().st_size > 1000
    first = (out / "replicates" / "rep_000000.npy").stat().st_mtime_ns
    # the same command with more replicates computes only the new ones
    argv[argv.index("4")] = "6"
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicates"] == 6 and metrics["new_replicates"] == 2
    assert (out / "replicates" / "rep_000000.npy").stat().st_mtime_ns == first
    # a changed setting is refused with one clear line
    argv[argv.index("poisson")] = "exp"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("petuq: error:") and "different settings" in err[-1]


def test_bootstrap_without_listmode_is_a_clear_error(tmp_path, capsys):
    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "1e4", "--out", str(acq)]) == 0
    assert main(["bootstrap", str(acq), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "no list-mode events" in capsys.readouterr().err
    assert main(["bootstrap", str(acq), "--scheduler", "slurm", "--out", str(tmp_path / "b")]) == 2
