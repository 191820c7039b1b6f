import json

import pytest

from petuq_sirf.cli.main import main
from petuq_sirf.io.acquisition_folder import load_acquisition


def test_simulate_then_reconstruct(tmp_path, capsys):
    acq = tmp_path / "acq"
    assert main(["simulate", "--phantom", "nema", "--counts", "2e5", "--listmode", "--out", str(acq)]) == 0
    loaded = load_acquisition(acq)
    assert loaded.listmode is not None and loaded.listmode.num_prompts == int(loaded.prompts.sum())
    assert loaded.truth is not None and "background" in loaded.regions
    assert (loaded.randoms_estimate + loaded.scatter).allclose(loaded.additive)
    for method in ("osem", "map-rdp"):
        out = tmp_path / method
        assert main(["reconstruct", str(acq), "--method", method, "--iterations", "3", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["method"] == method
        assert 0 < metrics["metrics"]["nrmse"] < 1
        assert (out / "image.nii.gz").is_file() and (out / "image.hv").is_file() and (out / "image.png").is_file()


def test_demo_writes_images_figure_and_metrics(tmp_path):
    assert main(["demo", "--quick", "--no-denoiser", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rec = metrics["reconstruction"]
    assert rec["map_rdp"]["background_variability"] < rec["osem"]["background_variability"]
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["simulate", "--scanner", "Biograph", "--out", "X"], "unknown scanner name"),
        (["simulate", "--counts", "-5", "--out", "X"], "--counts"),
        (["reconstruct", "does-not-exist", "--out", "X"], "not an acquisition folder"),
        (["simulate", "--span", "2", "--out", "X"], "span"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, capsys, argv, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petuq: error:") and needle in err[0]
    assert "Traceback" not in err[0]


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "simulate" in out and "reconstruct" in out and "demo" in out


def test_missing_backend_is_one_clear_line(tmp_path, capsys):
    from petuq_sirf.backends.registry import backend_available

    if backend_available("sirf"):
        pytest.skip("SIRF is installed here")
    acq = tmp_path / "acq"
    assert main(["simulate", "--counts", "1e4", "--out", str(acq)]) == 0
    assert main(["reconstruct", str(acq), "--backend", "sirf", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sirf" in err[-1].lower() and "docker" in err[-1].lower()
