"""``petuq confidence``: metrics.json, config.json and the figure from a list-mode acquisition folder."""

import json

import pytest

from petuq_sirf.cli.main import main

FAST = ["--ml-iterations", "10", "--inner-iterations", "2", "--grid-ratio", "2.0"]


@pytest.fixture(scope="module")
def acq(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conf") / "acq"
    args = ["simulate", "--phantom", "nema", "--counts", "2e4", "--image-size", "24", "--voxel-size-mm", "10"]
    assert main(args + ["--listmode", "--duration-s", "60", "--out", str(folder)]) == 0
    return folder


def test_confidence_command_writes_intervals(tmp_path, acq):
    out = tmp_path / "conf"
    args = ["confidence", str(acq), "--estimator", "osem", "--roi", "background", "--alpha", "0.1", "--frames", "3"]
    assert main(args + ["--target-relative-width", "2", "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    iv = m["intervals"]["osem"]["background"]
    assert len(iv["running_lower"]) == 2 and m["frame_end_s"] == [40.0, 60.0]
    assert all(lo <= hi for lo, hi in zip(iv["running_lower"], iv["running_upper"]))
    assert iv["running_upper"][1] - iv["running_lower"][1] <= iv["running_upper"][0] - iv["running_lower"][0]
    assert "kkt_stationarity" in iv and "truth_roi_mean" in m and "scan_time_needed_s" in m
    assert json.loads((out / "config.json").read_text())["alpha"] == 0.1
    assert (out / "bounds.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alpha", "1.5"], "alpha must be in (0, 1)"),
        (["--roi", "nope"], "unknown ROI 'nope'"),
        (["--estimator", "magic"], "unknown estimator 'magic'"),
        (["--frames", "100000"], "has no events"),
        (["--estimator", "denoiser"], "needs --denoiser-checkpoint"),
        (["--target-relative-width", "3"], "--target-relative-width must be in (0, 2]"),
    ],
)
def test_confidence_bad_input_one_line(tmp_path, acq, capsys, extra, message):
    rc = main(["confidence", str(acq), "--out", str(tmp_path / "o"), "--frames", "3", *FAST, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and err.startswith("petuq: error:") and "\n" not in err


def test_confidence_needs_listmode(tmp_path):
    folder = tmp_path / "acq"
    assert (
        main(["simulate", "--counts", "1e3", "--image-size", "16", "--voxel-size-mm", "15", "--out", str(folder)]) == 0
    )
    rc = main(["confidence", str(folder), "--out", str(tmp_path / "o")])
    assert rc == 2
