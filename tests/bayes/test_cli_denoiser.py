"""``petuq train-denoiser``, ``petuq denoise`` and ``petuq evaluate-uq`` end to end (tiny settings)."""

from __future__ import annotations

import json

import numpy as np

from petuq_sirf.bayes.training_data import DenoisingDataConfig, noisy_realisations
from petuq_sirf.cli.main import main
from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantoms import make_phantom


def test_train_denoise_evaluate(tmp_path, capsys):
    model = tmp_path / "model"
    args = ["train-denoiser", "--out", str(model), "--method", "cnn", "--epochs", "2", "--phantoms", "5"]
    args += ["--doses", "0.05", "--width", "8", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    record = json.loads((model / "config.json").read_text())
    assert set(record["extra"]["conformal_scales"]) == {"0.50", "0.60", "0.70", "0.80", "0.90", "0.95"}
    # a noisy input reconstructed like the training data, and its truth
    image = ImageGeometry.for_layout(SinogramLayout(get_scanner("test-2d")))
    config = DenoisingDataConfig(num_phantoms=5, dose_fractions=(0.05,))
    noisy, truth = noisy_realisations(make_phantom("nema", image), config, 0.05, 1, seed=3)
    write_image(tmp_path / "noisy.nii.gz", noisy[0].numpy(), image)
    write_image(tmp_path / "truth.nii.gz", truth.numpy(), image)
    out = tmp_path / "den"
    args = ["denoise", "--model", str(model), "--input", str(tmp_path / "noisy.nii.gz"), "--out", str(out)]
    assert main([*args, "--truth", str(tmp_path / "truth.nii.gz"), "--samples", "4"]) == 0
    for name in ("mean", "std", "epistemic_std", "aleatoric_std", "lower90", "upper90", "lower90_conformal"):
        assert (out / f"{name}.nii.gz").is_file(), name
    mean, geometry = read_image(out / "mean.nii.gz")
    lower, _ = read_image(out / "lower90.nii.gz")
    assert mean.shape == (1, 64, 64) and geometry.shape == image.shape and np.all(lower <= mean + 1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["uq"]["coverage"]["0.90"] <= 1 and "uq_conformal" in metrics
    ev = tmp_path / "eval"
    args = ["evaluate-uq", "--model", str(model), "--out", str(ev), "--realisations", "2", "--samples", "2"]
    assert main(args) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["methods"]["cnn"]["num_realisations"] == 2
    assert "conformal" in metrics["methods"]["cnn"] and "hot_sphere_22mm" in metrics["methods"]["cnn"]["regions"]
    for png in ("uq_panels.png", "calibration_curves.png", "z_scores.png"):
        assert (ev / png).is_file(), png
    capsys.readouterr()
    assert (
        main(
            ["denoise", "--model", str(tmp_path / "nope"), "--input", str(tmp_path / "noisy.nii.gz"), "--out", str(out)]
        )
        == 2
    )
    assert "petuq: error:" in capsys.readouterr().err


def test_denoiser_demo_hook_returns_coverage_and_maps(tmp_path):
    from petuq_sirf.pipelines.denoiser_demo import run_denoiser_demo
    from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate

    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    sim = simulate(nema_iec_phantom(image), layout, SimulationConfig(true_counts=1e5, seed=0))
    result = run_denoiser_demo(sim, tmp_path, seed=0, quick=True, num_samples=4)
    assert set(result["coverage"]) == {"0.50", "0.60", "0.70", "0.80", "0.90", "0.95"}
    assert all(0 <= v <= 1 for v in result["coverage_conformal"].values())
    assert result["nrmse"] > 0 and "background" in result["regions"]
    for key in ("mean", "std", "panel", "calibration"):
        assert (tmp_path / result["files"][key].split("/")[-1]).is_file()
    json.dumps(result)  # JSON-ready for metrics.json
