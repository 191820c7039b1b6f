"""Per-voxel-class calibration in ``benchmarks/pnp_ula_coverage.py`` (pooled class statistics, --voxel-calibration)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.pnp_ula_coverage import (
    Z_EDGES,
    Accumulator,
    add_class_stats,
    hist_cdf,
    hist_conformal_quantile,
    voxel_calibration,
    z_value,
)


def test_histogram_cdf_and_conformal_quantile_match_the_exact_ones() -> None:
    rng = np.random.default_rng(0)
    z = np.abs(rng.standard_t(3, size=20_000))
    hist = np.histogram(np.clip(z, Z_EDGES[0], Z_EDGES[-1]), Z_EDGES)[0]
    for x in (0.1, 0.7, 1.645, 4.0):
        assert hist_cdf(hist, x) == pytest.approx(float(np.mean(z <= x)), abs=0.003)
    exact = np.sort(z)[math.ceil((z.size + 1) * 0.9) - 1]
    assert hist_conformal_quantile(hist, 0.9) == pytest.approx(exact, rel=0.025)  # one bin is 2.3 % wide
    assert hist_conformal_quantile(hist[:0].tolist() + [3] + [0] * (hist.size - 1), 0.9) == math.inf


def _class_stats(seed: int, n: int) -> dict[str, dict]:
    """Three classes of ``n`` voxels x 4 data sets whose errors are 0.5, 1 and 3 times their std of 0.1
    (Student-t tails in class 2), pooled as the benchmark pools its data sets."""
    gen = torch.Generator().manual_seed(seed)
    pooled: dict[str, dict] = {}
    for _ in range(4):
        for c, scale in enumerate((0.5, 1.0, 3.0)):
            noise = torch.randn(n, generator=gen) if c < 2 else torch.distributions.StudentT(4.0).sample((n,))
            err = (0.1 * scale * noise).double()
            z = (err.abs() / 0.1).clamp(float(Z_EDGES[0]), float(Z_EDGES[-1])).numpy()
            stats = {"n": n, "err2": float(err.pow(2).sum()), "var": n * 0.01, "hist": np.histogram(z, Z_EDGES)[0]}
            add_class_stats(pooled, {str(c): stats})
    return json.loads(json.dumps({c: {**v, "hist": v["hist"].tolist()} for c, v in pooled.items()}))


def test_mondrian_variants_fix_every_class_where_raw_and_global_scaling_do_not() -> None:
    torch.manual_seed(0)  # the Student-t draws
    cal, test = _class_stats(0, 1000), _class_stats(1, 1000)
    out = voxel_calibration(cal, test)["variants"]
    raw, glob = out["raw"], out["global std scaling"]
    std_scale, conf = out["Mondrian std scaling"], out["Mondrian conformal"]
    # raw: the std is 2x too large in class 0 and ~3.5x too small in class 2
    assert raw["std_over_rmse_per_class"]["0"] == pytest.approx(2.0, rel=0.1)
    assert raw["min_class_coverage_0.90"] < 0.5 and raw["fraction_in_band"] < 0.4
    assert glob["min_class_coverage_0.90"] < 0.8 and glob["fraction_in_band"] < 0.4  # one factor fits no class
    # per-class std scaling: std/RMSE ~ 1 in every class of held-out exchangeable data
    assert all(0.9 < r < 1.1 for r in std_scale["std_over_rmse_per_class"].values())
    assert std_scale["fraction_in_band"] == 1.0
    # per-class conformal: nominal coverage in every class (>= nominal - 0.02), small calibration error
    assert conf["min_class_coverage_0.90"] >= 0.88 and conf["calibration_error"] < 0.02
    assert raw["calibration_error"] > 0.05


def test_accumulator_records_class_statistics_from_the_estimate() -> None:
    from petuq_sirf.scanner import ImageGeometry
    from petuq_sirf.simulation.phantom_families import family_phantoms

    image = ImageGeometry((1, 40, 40), (6.0, 6.0, 6.0))
    (ph,) = family_phantoms("thorax", image, "test", 1)
    truth = ph.activity.float()
    obj = ph.regions["object"].bool()
    acc = Accumulator()
    std = torch.full_like(truth, 0.1)
    acc.add("m", truth + 0.1, std, truth, obj, obj, 0.0, image.voxel_size_mm)
    classes = acc.table()[1]["m"]["raw"]["classes"]
    assert sum(v["n"] for v in classes.values()) == int(obj.sum())
    assert len(classes) >= 3
    for v in classes.values():  # error 0.1 = 1 std everywhere
        assert v["err2"] == pytest.approx(v["var"], rel=1e-4)
        assert sum(v["hist"]) == v["n"]
        assert hist_cdf(v["hist"], z_value(0.5)) == 0.0 and hist_cdf(v["hist"], 1.1) == 1.0
    raw = voxel_calibration(classes, classes)["variants"]["raw"]
    expected = 2 * z_value(0.9) * 0.1 / float(truth[obj].mean())
    assert raw["width_0.90_over_uptake"] == pytest.approx(expected, rel=1e-4)
    assert raw["coverage"]["0.90"] == 1.0 and raw["coverage"]["0.50"] == 0.0
    acc.add("none", truth, None, truth, obj, obj, 0.0, image.voxel_size_mm)  # no std: no class statistics
    assert acc.table()[1]["none"]["raw"]["classes"] == {}


def test_benchmark_unrolled_bootstrap_resamples_the_data_and_records_classes(tmp_path, monkeypatch) -> None:
    import sys

    from benchmarks import pnp_ula_coverage

    out = tmp_path / "unb"
    argv = ["pnp_ula_coverage.py", "--quick", "--methods", "unrolled-bootstrap", "--replicates", "4", "--out", str(out)]
    # a weights folder (here the shipped fbsem32's own) names the rows after it
    weights = (
        Path(pnp_ula_coverage.__file__).resolve().parents[1] / "petuq_sirf" / "weights" / "unrolled_fbsem32_test2d"
    )
    monkeypatch.setattr(sys, "argv", [*argv, "--unrolled-weights", str(weights)])
    pnp_ula_coverage.main()
    methods = json.loads((out / "pnp_ula_coverage.json").read_text())["brain"]["methods"]
    row = methods["unrolled (unrolled_fbsem32_test2d) bootstrap"]
    assert row["datasets"] == 3 and 0 < row["nrmse"] < 1
    # the replicates differ (the network sees differently weighted data): a positive std, pooled per class
    assert 0 < row["std_over_rmse"] < 5
    classes = row["raw"]["classes"]
    assert sum(v["n"] for v in classes.values()) == row["object_voxels"]
    assert all(v["var"] > 0 for v in classes.values())


def test_merge_with_voxel_calibration_reports_classes_and_draws_them(tmp_path, capsys) -> None:
    from benchmarks.pnp_ula_coverage import merge
    from petuq_sirf.scanner import ImageGeometry
    from petuq_sirf.simulation.phantom_families import family_phantoms

    image = ImageGeometry((1, 40, 40), (6.0, 6.0, 6.0))
    (ph,) = family_phantoms("thorax", image, "test", 1)
    truth = ph.activity.float()
    obj = ph.regions["object"].bool()

    def report(folder, split: str, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        acc = Accumulator()
        for _ in range(12):  # errors 3x the std everywhere: raw 90 % intervals cover ~0.4
            mean = truth + 0.3 * torch.randn(truth.shape, generator=gen)
            acc.add("m", mean, torch.full_like(truth, 0.1), truth, obj, obj, 0.0, image.voxel_size_mm)
        rep = {"source": "test", "settings": {"split": split, "counts": 5e4}}
        rep["thorax"] = {"postfilter_fwhm_mm": 0.0, "methods": acc.table()[1], "ula_diagnostics": {}}
        folder.mkdir()
        (folder / "pnp_ula_coverage.json").write_text(json.dumps(rep))

    report(tmp_path / "cal", "calibration", 0)
    report(tmp_path / "test", "test", 1)
    merge([str(tmp_path / "test")], tmp_path / "out", voxel_calibration=[str(tmp_path / "cal")])
    out = json.loads((tmp_path / "out" / "pnp_ula_coverage.json").read_text())
    variants = out["thorax"]["methods"]["m"]["voxel_calibration"]["variants"]
    assert variants["raw"]["coverage"]["0.90"] < 0.5
    per_class = variants["Mondrian conformal"]["class_coverage_0.90"]
    assert per_class and all(0.8 < c < 0.97 for c in per_class.values())
    assert abs(sum(variants["raw"]["class_fraction"].values()) - 1.0) < 0.2  # small classes are left out
    assert (tmp_path / "out" / "voxel_classes_thorax.png").is_file()
    assert "voxel_classes_thorax.png" in capsys.readouterr().out
