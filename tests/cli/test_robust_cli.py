"""The CLI never tracebacks and never loses data: every case users tried gets one line on stderr
(``petuq: error: ...``), exit status 2 (130 for an interrupt), and leaves the inputs as they were."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from petuq_sirf.cli.main import build_parser, main


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (to prove nothing there was overwritten)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(capsys, *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("petuq: error:") and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def acquisition(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("robust") / "acq"
    assert main(["--quiet", "simulate", "--counts", "1e5", "--listmode", "--out", str(folder)]) == 0
    return folder


# ----------------------------------------------------------------------------------------- --out
def test_out_equal_to_or_inside_the_input_is_refused(acquisition, capsys):
    before = _digest(acquisition)
    for out in (acquisition, acquisition / "results"):
        assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(out)]) == 2
        _one_error_line(capsys, "input folder", str(out))
    argv = ["bootstrap", str(acquisition), "--replicates", "2", "--quiet", "--out", str(acquisition)]
    assert main(argv) == 2
    _one_error_line(capsys, "input folder")
    assert _digest(acquisition) == before  # metrics.json and everything else untouched
    assert not (acquisition / "results").exists()


def test_out_naming_an_existing_file_or_another_acquisition(acquisition, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(existing)]) == 2
    _one_error_line(capsys, "existing file", "notes.txt")
    assert existing.read_text() == "keep me"
    other = tmp_path / "other_acq"
    assert main(["--quiet", "simulate", "--counts", "1e4", "--out", str(other)]) == 0
    capsys.readouterr()
    before = _digest(other)
    assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(other)]) == 2
    _one_error_line(capsys, "acquisition folder")
    assert _digest(other) == before


def test_read_only_out_is_one_line(acquisition, tmp_path, capsys, monkeypatch):
    """A read-only file system (EROFS from the write probe) and, when not root, a folder without write permission."""
    import petuq_sirf.cli.common as common

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as m:
        m.setattr(common.tempfile, "mkstemp", read_only)
        assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(tmp_path / "ro")]) == 2
        _one_error_line(capsys, "cannot write into --out", "Read-only file system")
    # under a path that is a file: the folder cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(blocker / "sub")]) == 2
    _one_error_line(capsys, "cannot create --out")
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert main(["reconstruct", str(acquisition), "--iterations", "1", "--out", str(locked)]) == 2
            _one_error_line(capsys, "cannot write into --out", "ermission denied")
        finally:
            locked.chmod(0o700)


# ---------------------------------------------------------------------------------- input files
@pytest.mark.parametrize("change", [b"\0" * 64, None])
def test_projection_data_of_the_wrong_length_is_refused(acquisition, tmp_path, capsys, change):
    import shutil

    copy = tmp_path / "acq"
    shutil.copytree(acquisition, copy)
    data = copy / "prompts.s"
    size = data.stat().st_size
    if change is None:
        data.write_bytes(data.read_bytes()[:-64])  # shorter
    else:
        data.write_bytes(data.read_bytes() + change)  # longer: today's bug, silently half-read
    assert main(["reconstruct", str(copy), "--iterations", "1", "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys, "prompts.s", "too short" if change is None else "too long")
    new = size - 64 if change is None else size + 64
    assert f"{new} bytes on disk" in line and f"needs {size}" in line


def test_listmode_size_not_matching_the_header_warns_with_numbers(tmp_path, capsys):
    import torch

    from petuq_sirf.io.mmr_listmode import write_mmr_listmode
    from petuq_sirf.scanner import SinogramLayout, get_scanner
    from petuq_sirf.simulation import events_from_counts

    layout = SinogramLayout(get_scanner("test-3d"), span=3, max_ring_difference=2, view_mashing=2)
    rng = np.random.default_rng(0)
    prompts = torch.as_tensor(rng.poisson(0.05, layout.shape)).float()
    events = events_from_counts(prompts, torch.zeros(layout.shape), 0.2, rng)
    hdr = write_mmr_listmode(tmp_path / "scan.l.hdr", events, layout, file_span=1)
    data = tmp_path / "scan.l"
    words = data.stat().st_size // 4
    data.write_bytes(data.read_bytes() + b"\x01\x02")  # two stray bytes: not a whole word
    argv = ["--quiet", "listmode", str(hdr), "--span", "3", "--max-ring-difference", "2", "--view-mashing", "2"]
    argv += ["--image-size", "16", "--voxel-size-mm", "8"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("petuq: warning:")]
    assert len(err) == 1 and f"{4 * words + 2} bytes" in err[0] and "2 bytes" in err[0] and str(words) in err[0]
    # the header's word count disagrees with the file (a truncated copy)
    data.write_bytes(data.read_bytes()[: 4 * (words - 10)])
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("petuq: warning:")]
    assert len(err) == 1 and f"is {words}" in err[0] and f"holds {words - 10} words" in err[0]


# ---------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "argv,needles",
    [
        (["simulate", "--counts", "1e30"], ("argument --counts", "1e+30", "maximum 1e+10")),
        (
            ["simulate", "--counts", "nan"],
            (
                "argument --counts",
                "not a finite number",
            ),
        ),
        (["simulate", "--image-size", "100000"], ("argument --image-size", "maximum 2048")),
        (["simulate", "--scatter-fraction", "1.5"], ("argument --scatter-fraction",)),
        (["reconstruct", "acq", "--subsets", "0"], ("argument --subsets", ">= 1")),
        (["reconstruct", "acq", "--samples", "1"], ("argument --samples", ">= 2")),
        (["bootstrap", "acq", "--level", "1"], ("argument --level", "< 1")),
        (["train-denoiser", "--width", "1e9"], ("argument --width", "maximum 1024")),
        (["demo", "--counts", "-1"], ("argument --counts", "> 0")),
        (["train-unrolled", "--counts", "1e30"], ("argument --counts",)),
    ],
)
def test_absurd_numbers_name_the_argument(tmp_path, capsys, argv, needles):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_library_bounds_counts_too():
    from petuq_sirf.simulation.simulate import SimulationConfig

    with pytest.raises(ValueError, match="true_counts"):
        SimulationConfig(true_counts=1e30)


# ---------------------------------------------------------------------------------- networks
def _tiny_model(folder: Path, image_grid: dict | None = None) -> Path:
    from petuq_sirf.bayes.checkpoint import save_denoiser
    from petuq_sirf.bayes.denoisers import DenoiserConfig, make_denoiser
    from petuq_sirf.bayes.networks import NetworkConfig

    model = make_denoiser(DenoiserConfig(method="cnn", network=NetworkConfig(width=4, dilations=(1, 2))))
    extra = {"data_config": {"scanner": "test-2d"}}
    if image_grid:
        extra["image_grid"] = image_grid
    return save_denoiser(model, folder, extra)


def test_config_json_asking_for_an_absurd_network_is_refused_before_allocating(tmp_path, capsys):
    import time

    from petuq_sirf.io.image_io import write_image
    from petuq_sirf.scanner import ImageGeometry

    model = _tiny_model(tmp_path / "model")
    record = json.loads((model / "config.json").read_text())
    record["config"]["network"]["width"] = 10**7  # ~1e15 weights if it were built
    (model / "config.json").write_text(json.dumps(record))
    write_image(tmp_path / "x.nii.gz", np.ones((1, 64, 64), np.float32), ImageGeometry((1, 64, 64), (3.8, 4.0, 4.0)))
    t0 = time.process_time()
    assert (
        main(["denoise", "--model", str(model), "--input", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert time.process_time() - t0 < 5
    _one_error_line(capsys, "network width", "10000000")
    record["config"]["network"].update(width=1024, dilations=[1] * 60)  # each field allowed, the total is not
    (model / "config.json").write_text(json.dumps(record))
    assert (
        main(["denoise", "--model", str(model), "--input", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "o")])
        == 2
    )
    _one_error_line(capsys, "parameters", "limit")


def test_weights_metadata_asking_for_an_absurd_network_is_refused(acquisition, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "huge.safetensors"
    info = {"kind": "pnp-denoiser", "net_config": {"channels": 10**6, "depth": 4}, "voxel_size_mm": [1, 4, 4]}
    save_file({"net.x": torch.zeros(1)}, str(weights), metadata={"info": json.dumps(info)})
    argv = ["reconstruct", str(acquisition), "--method", "pnp-admm", "--weights", str(weights)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "huge.safetensors", "invalid network configuration", "channels")


def test_unrolled_and_pnp_configs_are_bounded():
    from petuq_sirf.recon.nonexpansive import NonexpansiveDenoiserConfig
    from petuq_sirf.recon.unrolled import UnrolledConfig

    with pytest.raises(ValueError, match="channels"):
        UnrolledConfig(channels=10**6)
    with pytest.raises(ValueError, match="parameters"):
        NonexpansiveDenoiserConfig(channels=1024, depth=60)


def test_denoiser_refuses_another_grid_unless_forced(tmp_path, capsys):
    from petuq_sirf.io.image_io import write_image
    from petuq_sirf.scanner import ImageGeometry

    model = _tiny_model(tmp_path / "model", {"shape": [1, 64, 64], "voxel_size_mm": [3.8, 4.0, 4.0]})
    good = ImageGeometry((1, 64, 64), (3.8, 4.0, 4.0))
    other = ImageGeometry((1, 128, 128), (3.8, 2.0, 2.0))
    write_image(tmp_path / "good.nii.gz", np.ones(good.shape, np.float32), good)
    write_image(tmp_path / "other.nii.gz", np.ones(other.shape, np.float32), other)
    base = ["denoise", "--model", str(model), "--samples", "2"]
    assert main([*base, "--input", str(tmp_path / "other.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "128 x 128 voxels of 2 x 2 mm", "64 x 64 voxels of 4 x 4 mm", "--force")
    assert not (tmp_path / "o").exists()
    assert main([*base, "--input", str(tmp_path / "other.nii.gz"), "--out", str(tmp_path / "o"), "--force"]) == 0
    assert "petuq: warning:" in capsys.readouterr().err and (tmp_path / "o" / "mean.nii.gz").is_file()
    assert main([*base, "--input", str(tmp_path / "good.nii.gz"), "--out", str(tmp_path / "g")]) == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------- bootstrap store
BOOT = ["--replicates", "3", "--iterations", "2", "--full-data-iterations", "3", "--weights", "poisson", "--quiet"]


def _write_lock(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lock = {"pid": pid, "host": socket.gethostname(), "started": "2026-12-01T20:00:00Z"}
    (out / "bootstrap.lock").write_text(json.dumps(lock))


def test_second_bootstrap_on_one_out_says_who_holds_it(acquisition, tmp_path, capsys):
    out = tmp_path / "boot"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, holder.pid)
        assert main(["bootstrap", str(acquisition), *BOOT, "--out", str(out)]) == 2
        _one_error_line(capsys, f"pid {holder.pid}", socket.gethostname(), "2026-12-01T20:00:00Z", "in use")
        assert not (out / "replicates").exists() and (out / "bootstrap.lock").is_file()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, taken over with a warning, and released at the end
    assert main(["bootstrap", str(acquisition), *BOOT, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "petuq: warning:" in err and f"stale lock of pid {holder.pid}" in err
    assert not (out / "bootstrap.lock").exists()


def test_altered_or_truncated_replicates_are_named_and_recomputed(acquisition, tmp_path, capsys):
    import nibabel as nib

    out = tmp_path / "boot"
    assert main(["bootstrap", str(acquisition), *BOOT, "--out", str(out)]) == 0
    capsys.readouterr()
    mean = np.asarray(nib.load(out / "mean.nii.gz").dataobj)
    altered, truncated = out / "replicates" / "rep_000001.npy", out / "replicates" / "rep_000002.npy"
    arr = np.load(altered)
    arr[0, 10, 10] += 5.0  # still a valid .npy file: only the checksum shows it
    np.save(altered, arr)
    truncated.write_bytes(truncated.read_bytes()[:50])  # today: "EOF: reading array header", no file named
    from petuq_sirf.bootstrap import ReplicateStore
    from petuq_sirf.bootstrap.store import DamagedReplicateError

    with pytest.raises(DamagedReplicateError, match="rep_000001.npy"):
        ReplicateStore.existing(out).load(1)
    assert main(["bootstrap", str(acquisition), *BOOT, "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("petuq: warning:")]
    assert len(warnings) == 2
    assert "rep_000001.npy" in warnings[0] and "checksum" in warnings[0] and "recomputing replicate 1" in warnings[0]
    assert "rep_000002.npy" in warnings[1] and "recomputing replicate 2" in warnings[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["new_replicates"] == 2 and metrics["replicates"] == 3
    np.testing.assert_array_equal(np.asarray(nib.load(out / "mean.nii.gz").dataobj), mean)


# ---------------------------------------------------------------------------------- training resume
TRAIN = ["train-denoiser", "--method", "cnn", "--epochs", "4", "--phantoms", "4", "--doses", "0.05"]
TRAIN += ["--width", "4", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def pair_cache(tmp_path_factory) -> list[str]:
    """One cache of simulated training pairs for every training run below (the same settings)."""
    return ["--cache", str(tmp_path_factory.mktemp("pairs"))]


def test_interrupted_train_denoiser_resumes_to_the_same_weights(tmp_path, capsys, monkeypatch, pair_cache):
    from safetensors.torch import load_file

    from petuq_sirf.bayes import resume

    cache = pair_cache
    assert main([*TRAIN, *cache, "--out", str(tmp_path / "straight")]) == 0
    reference = load_file(tmp_path / "straight" / "model.safetensors")
    capsys.readouterr()

    saved = []
    original = resume.EpochCheckpoint.save

    def interrupt_after_two_epochs(self, fingerprint, state):
        original(self, fingerprint, state)
        saved.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(resume.EpochCheckpoint, "save", interrupt_after_two_epochs)
        assert main([*TRAIN, *cache, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petuq: interrupted") and saved == [1, 2]
    assert (out / "training_state" / "net.pt").is_file() and not (out / "model.safetensors").exists()
    assert main([*TRAIN, *cache, "--out", str(out)]) == 0
    assert "resuming" in capsys.readouterr().out
    resumed = load_file(out / "model.safetensors")
    assert set(resumed) == set(reference)
    for name, value in reference.items():
        assert np.array_equal(resumed[name].numpy(), value.numpy()), name
    assert not (out / "training_state").exists()  # removed once the model is saved


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, capsys, monkeypatch, pair_cache):
    from petuq_sirf.bayes import resume

    original = resume.EpochCheckpoint.save

    def stop(self, fingerprint, state):
        original(self, fingerprint, state)
        raise KeyboardInterrupt

    out = tmp_path / "m"
    with monkeypatch.context() as m:
        m.setattr(resume.EpochCheckpoint, "save", stop)
        assert main([*TRAIN, *pair_cache, "--out", str(out)]) == 130
    capsys.readouterr()
    assert main([*TRAIN, *pair_cache, "--lr", "0.01", "--out", str(out)]) == 2
    _one_error_line(capsys, "other settings", "--restart")
    assert main([*TRAIN, *pair_cache, "--lr", "0.01", "--restart", "--out", str(out)]) == 0
    assert not (out / "training_state").exists() and (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------- interrupts, crashes
def test_keyboard_interrupt_and_unexpected_errors_are_one_line(acquisition, tmp_path, capsys, monkeypatch):
    import petuq_sirf.pipelines.reconstruction as rec  # the method dispatch (the CLI calls it)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def crash(*args, **kwargs):
        raise ZeroDivisionError("float division by zero\nsecond line")

    argv = ["reconstruct", str(acquisition), "--iterations", "1", "--out", str(tmp_path / "r")]
    with monkeypatch.context() as m:
        m.setattr(rec, "osem", interrupted)
        assert main(argv) == 130
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("petuq: interrupted")
        m.setattr(rec, "osem", crash)
        assert main(argv) == 2
        _one_error_line(capsys, "unexpected ZeroDivisionError", "float division by zero second line", "--traceback")
        with pytest.raises(ZeroDivisionError):
            main(["--traceback", *argv])


# ---------------------------------------------------------------------------------- help
def test_every_option_has_a_sentence_and_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help.split()) >= 2, (name, action.option_strings or action.dest)
        text = p.format_help()
        assert "show this help message" in text
    text = sub.choices["reconstruct"].format_help()
    assert "(default: 8)" in " ".join(text.split())  # --subsets
    assert "(default: osem)" in " ".join(text.split())
    assert "(default: 100)" in " ".join(sub.choices["bootstrap"].format_help().split())  # --replicates


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(capsys):
    import torch

    from petuq_sirf.scanner import SinogramLayout, get_scanner
    from petuq_sirf.simulation.randoms import estimate_randoms

    layout = SinogramLayout(get_scanner("test-2d"))
    estimate_randoms(layout, torch.ones(layout.shape), num_iterations=2, progress=True)
    assert capsys.readouterr().err == ""  # pytest's capture is not a TTY
