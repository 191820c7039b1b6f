"""ROI-conformal lesion intervals of the bootstrap: ``petuq calibrate-roi`` and ``petuq bootstrap --roi-calibration``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from petuq_sirf.pipelines.roi_calibration import (
    apply_roi_calibration,
    fit_roi_calibration,
    load_roi_calibration,
    save_roi_calibration,
)

CONFIG = {"weights": "exp", "seed": 0, "num_iterations": 5, "estimator": "osem", "num_subsets": 8, "num_replicates": 10}


def _runs(n_runs: int, rng: np.random.Generator, seed0: int = 0) -> list[dict]:
    """Bootstrap metrics whose lesion means are biased by -20 % +/- 5 % with 90 % intervals of +/- 3 %
    (small lesions) or +/- 1 % (large lesions): raw intervals miss almost every truth."""
    runs = []
    for r in range(n_runs):
        roi = {}
        for i in range(4):
            truth = float(rng.uniform(1.0, 3.0))
            centre = truth * (0.8 + 0.05 * float(rng.standard_normal()))
            half = (0.03 if i % 2 else 0.01) * truth
            roi[f"lesion_{i}"] = {
                "mean": centre,
                "interval_0.90": [centre - half, centre + half],
                "truth": truth,
                "equivalent_diameter_mm": 8.0 if i % 2 else 25.0,
            }
        roi["lesions"] = {"mean": 1.0, "interval_0.90": [0.9, 1.1], "truth": 5.0, "equivalent_diameter_mm": 30.0}
        runs.append({"command": "bootstrap", "config": {**CONFIG, "seed": seed0 + r}, "roi": roi})
    return runs


def test_fit_and_apply_cover_exchangeable_biased_lesions(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cal = fit_roi_calibration(_runs(50, rng), level=0.9)
    assert cal["calibration_rois"] == 200  # the union ROI 'lesions' is not a lesion_* ROI
    q = cal["conformal"]["quantiles"]["0.90"]
    assert set(q) == {"<15mm", ">=15mm"} and q[">=15mm"] > q["<15mm"] > 1  # narrower raw intervals need more
    hits = raw = n = 0
    for metrics in _runs(100, rng, seed0=1000):
        block = apply_roi_calibration(metrics, cal)
        out = block["roi"]
        assert set(out) == {f"lesion_{i}" for i in range(4)}
        assert block["coverage"] == sum(e["inside"] for e in out.values()) / 4
        for name, entry in out.items():
            post = metrics["roi"][name]
            lo, hi = entry["interval"]
            assert abs(0.5 * (lo + hi) - post["mean"]) < 1e-9  # centred on the replicates' ROI mean
            hits += entry["inside"]
            raw += post["interval_0.90"][0] <= post["truth"] <= post["interval_0.90"][1]
            n += 1
    assert raw / n < 0.05 and 0.86 <= hits / n <= 0.95
    save_roi_calibration(tmp_path / "roi_calibration.json", cal)
    assert load_roi_calibration(tmp_path) == json.loads(json.dumps(cal))  # the folder or the file


def test_roi_calibration_refuses_what_it_cannot_stand_for(tmp_path) -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="too few for level 0.9"):
        fit_roi_calibration(_runs(2, rng), level=0.9)  # 8 lesions < 9
    mixed = _runs(3, rng)
    mixed[1]["config"] = {**CONFIG, "num_iterations": 20}
    with pytest.raises(ValueError, match="run 1 has other bootstrap settings than run 0 \\(num_iterations\\)"):
        fit_roi_calibration(mixed)
    cal = fit_roi_calibration(_runs(3, rng))
    other = _runs(1, rng)[0]
    other["config"] = {**CONFIG, "estimator": "map-rdp"}
    with pytest.raises(ValueError, match="other bootstrap settings \\(estimator\\)"):
        apply_roi_calibration(other, cal)
    no_truth = _runs(1, rng)[0]
    del no_truth["roi"]["lesion_0"]["truth"]
    with pytest.raises(ValueError, match="lacks truth"):
        fit_roi_calibration([no_truth] * 3)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_roi_calibration(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not an ROI calibration"):
        load_roi_calibration(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        load_roi_calibration(tmp_path / "missing.json")


def test_cli_family_phantoms_calibrate_roi_and_bootstrap_with_it(tmp_path, capsys, simulate_and_bootstrap) -> None:
    from petuq_sirf.cli.main import main

    boot = ["--estimator", "osem", "--iterations", "3", "--replicates", "4", "--level", "0.5", "--quiet"]
    runs = [str(simulate_and_bootstrap(f"family:thorax:calibration:{k}", boot, f"cal{k}", seed=k)[1]) for k in range(2)]
    rois = json.loads((tmp_path / "boot_cal0" / "metrics.json").read_text())["roi"]
    assert any(k.startswith("lesion_") and rois[k]["equivalent_diameter_mm"] > 0 for k in rois)
    assert main(["calibrate-roi", *runs, "--level", "0.5", "--out", str(tmp_path / "rc")]) == 0
    cal = load_roi_calibration(tmp_path / "rc")
    assert cal["bootstrap_settings"]["estimator"] == "osem" and cal["calibration_runs"] == runs
    rc = ("--roi-calibration", str(tmp_path / "rc"))
    test, out = simulate_and_bootstrap("family:brain:test:0", boot, "test", rc)
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["roi_conformal"]
    assert block["level"] == 0.5 and block["roi"] and 0.0 <= block["coverage"] <= 1.0
    for name, entry in block["roi"].items():
        post = metrics["roi"][name]
        half = 0.5 * (post["interval_0.50"][1] - post["interval_0.50"][0])
        assert entry["interval"][1] - post["mean"] == pytest.approx(entry["factor"] * half)
    capsys.readouterr()
    # one-line refusals: other settings or level, an existing calibration, a bad family phantom name
    wrong = ["bootstrap", str(test), "--replicates", "3", "--iterations", "2", "--full-data-iterations", "2"]
    assert (
        main([*wrong, "--level", "0.5", "--roi-calibration", str(tmp_path / "rc"), "--out", str(tmp_path / "w")]) == 2
    )
    assert "other bootstrap settings" in capsys.readouterr().err
    assert (
        main(
            [
                "bootstrap",
                str(test),
                *boot[:-3],
                "--roi-calibration",
                str(tmp_path / "rc"),
                "--out",
                str(tmp_path / "w2"),
            ]
        )
        == 2
    )
    assert "for level 0.5" in capsys.readouterr().err
    assert main(["calibrate-roi", *runs, "--level", "0.5", "--out", str(tmp_path / "rc")]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert main(["simulate", "--phantom", "family:thorax", "--out", str(tmp_path / "x")]) == 2
    assert "family:<family>:<split>:<index>" in capsys.readouterr().err
