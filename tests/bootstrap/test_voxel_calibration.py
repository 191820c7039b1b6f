"""Per-voxel-class calibration of the bootstrap: ``petuq calibrate-voxels`` and ``petuq bootstrap --voxel-calibration``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from petuq_sirf.pipelines.voxel_calibration import (
    CalibrationRun,
    apply_voxel_calibration,
    fit_voxel_calibration,
    load_voxel_calibration,
    save_voxel_calibration,
)
from petuq_sirf.recon import gaussian_postfilter
from petuq_sirf.scanner import ImageGeometry
from petuq_sirf.simulation.phantom_families import family_phantom, seeds

CONFIG = {"weights": "exp", "seed": 0, "num_iterations": 5, "estimator": "osem", "num_subsets": 8, "num_replicates": 10}
IMAGE = ImageGeometry((1, 40, 40), (6.0, 6.0, 6.0))
NOISE = 0.05


def _runs(split: str, num: int, seed: int) -> list[CalibrationRun]:
    """'Bootstrap runs' whose mean is a 12 mm smoothed truth plus noise of std 0.05 and whose std knows the
    noise only: edges and lesions are biased far beyond their std."""
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for k, s in enumerate(seeds(split, num)):
        truth = family_phantom("ellipses", IMAGE, s).activity.double()
        mean = gaussian_postfilter(truth, 12.0, IMAGE.voxel_size_mm) + NOISE * torch.randn(truth.shape, generator=gen)
        runs.append(
            CalibrationRun(
                {**CONFIG, "seed": k},
                mean.numpy(),
                np.full(truth.shape, NOISE),
                truth.numpy(),
                truth.numpy() > 0,
                IMAGE.voxel_size_mm,
                name=f"{split}{k}",
            )
        )
    return runs


def _coverage(runs: list[CalibrationRun], lo: list[np.ndarray], hi: list[np.ndarray]) -> float:
    inside = [((r.truth >= a) & (r.truth <= b))[r.mask] for r, a, b in zip(runs, lo, hi)]
    return float(np.concatenate(inside).mean())


def test_fit_and_apply_cover_exchangeable_held_out_runs(tmp_path) -> None:
    cal, test = _runs("calibration", 25, 0), _runs("test", 25, 1)
    calibration = fit_voxel_calibration(cal, levels=(0.5, 0.9))
    assert calibration["calibration_voxels"] == sum(int(r.mask.sum()) for r in cal)
    assert calibration["bootstrap_settings"] == {k: v for k, v in CONFIG.items() if k not in ("seed", "num_replicates")}
    save_voxel_calibration(tmp_path / "v.json", calibration)
    loaded = load_voxel_calibration(tmp_path / "v.json")
    outs = [apply_voxel_calibration(loaded, r.config, r.mean, r.std, IMAGE.voxel_size_mm, 0.9) for r in test]
    z90 = 1.6448536
    raw = _coverage(test, [r.mean - z90 * r.std for r in test], [r.mean + z90 * r.std for r in test])
    calibrated = _coverage(test, [o["lower"] for o in outs], [o["upper"] for o in outs])
    assert raw < 0.75  # the noise-only std misses the smoothing bias
    assert 0.87 <= calibrated <= 0.95
    # the calibrated std has the RMS error of the mean (bias included) over the held-out body voxels
    err2 = np.concatenate([((r.mean - r.truth) ** 2)[r.mask] for r in test])
    var = np.concatenate([(o["std_calibrated"] ** 2)[r.mask] for r, o in zip(test, outs)])
    assert 0.85 < np.sqrt(var.mean() / err2.mean()) < 1.15
    # intervals are wider where the class is biased (edges) than in flat tissue: the classes matter
    widths = np.concatenate([(o["upper"] - o["lower"])[r.mask] for r, o in zip(test, outs)])
    assert widths.max() > 2.0 * widths.min()


def test_voxel_calibration_refuses_what_it_cannot_stand_for(tmp_path) -> None:
    cal = _runs("calibration", 3, 0)
    calibration = fit_voxel_calibration(cal, levels=(0.9,))
    r = cal[0]
    with pytest.raises(ValueError, match="other bootstrap settings.*num_iterations"):
        apply_voxel_calibration(calibration, {**CONFIG, "num_iterations": 9}, r.mean, r.std, IMAGE.voxel_size_mm, 0.9)
    with pytest.raises(ValueError, match="no quantiles for level 0.8"):
        apply_voxel_calibration(calibration, CONFIG, r.mean, r.std, IMAGE.voxel_size_mm, 0.8)
    with pytest.raises(ValueError, match="voxels of"):
        apply_voxel_calibration(calibration, CONFIG, r.mean, r.std, (6.0, 3.0, 3.0), 0.9)
    other = [
        *cal[:2],
        CalibrationRun({**CONFIG, "estimator": "map-rdp"}, r.mean, r.std, r.truth, r.mask, r.voxel_size_mm),
    ]
    with pytest.raises(ValueError, match="run 2 has other bootstrap settings"):
        fit_voxel_calibration(other)
    with pytest.raises(ValueError, match="different shapes"):
        CalibrationRun(CONFIG, r.mean, r.std[..., :3], r.truth, r.mask, r.voxel_size_mm)
    with pytest.raises(ValueError, match="no body voxels"):
        CalibrationRun(CONFIG, r.mean, r.std, r.truth, np.zeros_like(r.mask), r.voxel_size_mm)
    with pytest.raises(ValueError, match="no calibration runs"):
        fit_voxel_calibration([])
    (tmp_path / "roi.json").write_text(json.dumps({"format": "petuq-roi-calibration", "version": 1}))
    with pytest.raises(ValueError, match="not a voxel calibration file"):
        load_voxel_calibration(tmp_path / "roi.json")
    with pytest.raises(FileNotFoundError):
        load_voxel_calibration(tmp_path / "missing")


def test_cli_calibrate_voxels_and_bootstrap_with_it(tmp_path, capsys, simulate_and_bootstrap) -> None:
    from petuq_sirf.cli.main import main

    boot = ["--estimator", "osem", "--iterations", "3", "--replicates", "4", "--quiet"]
    runs = [str(simulate_and_bootstrap(f"family:thorax:calibration:{k}", boot, f"cal{k}", seed=k)[1]) for k in range(2)]
    assert main(["calibrate-voxels", *runs, "--out", str(tmp_path / "vc")]) == 0
    assert "calibration voxels from 2 runs" in capsys.readouterr().out
    cal = load_voxel_calibration(tmp_path / "vc")
    assert cal["bootstrap_settings"]["estimator"] == "osem" and cal["calibration_runs"] == runs
    vc = ("--voxel-calibration", str(tmp_path / "vc"))
    test, out = simulate_and_bootstrap("family:brain:test:0", boot, "test", vc)
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["voxel_conformal"]
    assert block["level"] == 0.9 and block["calibration_runs"] == 2 and 0.0 <= block["coverage"] <= 1.0
    from petuq_sirf.io.image_io import read_image

    mean, _ = read_image(out / "mean.nii.gz")
    std, _ = read_image(out / "std.nii.gz")
    lo, _ = read_image(out / "lower_0.90_calibrated.nii.gz")
    hi, _ = read_image(out / "upper_0.90_calibrated.nii.gz")
    classes, _ = read_image(out / "voxel_class.nii.gz")
    q = cal["conformal"]["quantiles"]["0.90"]
    pooled = cal["conformal"]["global_quantiles"]["0.90"]
    factor = np.vectorize(lambda c: q.get(str(int(c)), pooled))(classes)
    body = std > 1e-3
    assert np.allclose((hi - mean)[body], (factor * std)[body], rtol=1e-3, atol=1e-4)
    assert np.allclose((mean - lo)[body], (factor * std)[body], rtol=1e-3, atol=1e-4)
    assert (out / "std_calibrated.nii.gz").is_file() and (out / "bootstrap.png").is_file()
    capsys.readouterr()
    # one-line refusals: other settings, a level not calibrated, an overwrite, a moved acquisition
    other = ["bootstrap", str(test), *boot[:2], "--iterations", "2", *boot[4:]]
    assert main([*other, "--voxel-calibration", str(tmp_path / "vc"), "--out", str(tmp_path / "w")]) == 2
    assert "other bootstrap settings" in capsys.readouterr().err
    lvl = ["bootstrap", str(test), *boot, "--level", "0.85", "--voxel-calibration", str(tmp_path / "vc")]
    assert main([*lvl, "--out", str(tmp_path / "w2")]) == 2
    assert "no quantiles for level 0.85" in capsys.readouterr().err
    assert main(["calibrate-voxels", *runs, "--out", str(tmp_path / "vc")]) == 2
    assert "never overwritten" in capsys.readouterr().err
    shutil.move(tmp_path / "cal0", tmp_path / "moved")
    assert main(["calibrate-voxels", *runs, "--out", str(tmp_path / "vc2")]) == 2
    assert "is not there any more" in capsys.readouterr().err
