"""Lesion ROI-mean coverage in ``benchmarks/pnp_ula_coverage.py`` (per lesion, size group, hot / cold)."""

from __future__ import annotations

import json

import torch

from benchmarks.pnp_ula_coverage import Accumulator
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantom_families import LesionSpec, family_phantoms


def _phantom():
    image = ImageGeometry.for_layout(SinogramLayout(get_scanner("test-2d")))
    spec = LesionSpec(count=(3, 3), diameter_mm=(8.0, 30.0), hot_fraction=0.5)
    (ph,) = family_phantoms("thorax", image, "test", 1, lesions=spec)
    return ph, image


def test_roi_coverage_follows_the_samples_position_and_pools_by_group() -> None:
    ph, image = _phantom()
    truth = ph.activity.float()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((64, *truth.shape), generator=gen)
    acc = Accumulator()
    obj = ph.regions["object"].bool()
    les = ph.regions["lesions"].bool()
    for name in ("centred", "biased"):
        acc.add(name, truth, truth.mean().expand_as(truth), truth, obj, les, 0.0)
    # samples centred on the truth: every lesion's 90 % ROI interval holds its true mean
    acc.add_rois("centred", truth + 0.05 * truth.mean() * noise, truth, ph, image.voxel_size_mm)
    # samples of a 30 % too low image with a tiny spread: no interval holds the truth
    acc.add_rois("biased", 0.7 * truth + 1e-3 * truth.mean() * noise, truth, ph, image.voxel_size_mm)
    _, out = acc.table()
    n = len(ph.lesions)
    assert n == 3
    centred, biased = out["centred"]["lesion_roi"], out["biased"]["lesion_roi"]
    assert centred["count"] == biased["count"] == n
    assert centred["coverage"] == 1.0 and biased["coverage"] == 0.0
    assert abs(biased["median_rel_bias"] + 0.3) < 0.02 and abs(centred["median_rel_bias"]) < 0.05
    groups = centred["groups"]
    assert groups["<15mm"]["count"] + groups[">=15mm"]["count"] == n
    assert groups["hot"]["count"] + groups["cold"]["count"] == n
    hot = sum(les.contrast > 1 for les in ph.lesions)
    assert groups["hot"]["count"] == hot
    # the raw per-lesion rows survive a JSON round trip (what --merge pools)
    rows = json.loads(json.dumps(out["centred"]["raw"]["rois"]))
    assert len(rows) == n and all(r["lower"] <= r["truth"] <= r["upper"] for r in rows)


def test_roi_conformal_widens_biased_intervals_to_cover_exchangeable_lesions() -> None:
    from benchmarks.pnp_ula_coverage import roi_conformal

    gen = torch.Generator().manual_seed(1)

    def rows(n: int) -> list[dict]:
        out = []
        for i in range(n):
            t = 1.0 + float(torch.rand(1, generator=gen))
            bias = -0.2 + 0.05 * float(torch.randn(1, generator=gen))  # -20 % bias, half-width 2 %
            out.append(
                {
                    "truth": t,
                    "rel_bias": bias,
                    "lower": t * (1 + bias) - 0.02 * t,
                    "upper": t * (1 + bias) + 0.02 * t,
                    "equivalent_diameter_mm": 8.0 if i % 2 else 20.0,
                }
            )
        return out

    cal, test = rows(200), rows(400)
    raw = sum(r["lower"] <= r["truth"] <= r["upper"] for r in test) / len(test)
    rc = roi_conformal(cal, test)
    assert raw < 0.05  # the raw intervals miss the biased means
    assert 0.85 <= rc["coverage"] <= 0.96  # split-conformal: >= 0.9 in expectation on exchangeable lesions
    assert set(rc["groups"]) == {"<15mm", ">=15mm"} and all(g["count"] == 200 for g in rc["groups"].values())
    assert rc["median_rel_width"] > 0.3  # widened from 4 % to cover a 20 % bias


def test_merge_with_roi_calibration_reads_reports_and_refuses_test_runs(tmp_path, capsys) -> None:
    import pytest

    from benchmarks.pnp_ula_coverage import merge

    ph, image = _phantom()
    truth = ph.activity.float()
    obj, les = ph.regions["object"].bool(), ph.regions["lesions"].bool()
    gen = torch.Generator().manual_seed(2)

    def report(folder, split: str, seed_shift: float) -> None:
        acc = Accumulator()
        acc.add("PnP-ULA", 0.8 * truth, 0.1 * truth, truth, obj, les, 1.0)
        for _ in range(8):  # realisations: a 20 % low image with a small spread and some jitter
            jitter = 1.0 + seed_shift * float(torch.randn(1, generator=gen))
            samples = (0.8 * jitter) * truth + 1e-3 * torch.randn((16, *truth.shape), generator=gen)
            acc.add_rois("PnP-ULA", samples, truth, ph, image.voxel_size_mm)
        _, rows = acc.table()
        rep = {
            "source": "test",
            "settings": {"methods": "ula,bootstrap", "split": split},  # a string 'methods', as the CLI writes
            "thorax": {"postfilter_fwhm_mm": 4.0, "methods": rows, "ula_diagnostics": {}},
        }
        folder.mkdir()
        (folder / "pnp_ula_coverage.json").write_text(json.dumps(rep))

    report(tmp_path / "cal", "calibration", 0.05)
    report(tmp_path / "test", "test", 0.05)
    merge([str(tmp_path / "test")], tmp_path / "out", [str(tmp_path / "cal")])
    out = json.loads((tmp_path / "out" / "pnp_ula_coverage.json").read_text())
    rc = out["thorax"]["methods"]["PnP-ULA"]["lesion_roi_conformal"]
    assert out["thorax"]["methods"]["PnP-ULA"]["lesion_roi"]["coverage"] == 0.0  # raw: all miss
    assert rc["calibration_lesions"] == 8 * len(ph.lesions) and rc["coverage"] > 0.5  # widened by the factors
    assert "ROI-conformal" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--split calibration"):
        merge([str(tmp_path / "test")], tmp_path / "out2", [str(tmp_path / "test")])


def test_roi_rows_store_the_centre_and_old_rows_rebuild_it() -> None:
    import pytest

    from benchmarks.pnp_ula_coverage import _roi_arrays, roi_summary
    from petuq_sirf.uq.roi import roi_mean_samples

    ph, image = _phantom()
    truth = ph.activity.float()
    gen = torch.Generator().manual_seed(3)
    samples = 1.3 * truth + 0.02 * truth.mean() * torch.randn((32, *truth.shape), generator=gen)
    acc = Accumulator()
    acc.add_rois("m", samples, truth, ph, image.voxel_size_mm)
    rows = acc.rows["m"]["rois"]
    for row in rows:
        roi_samples = roi_mean_samples(samples, ph.regions[f"lesion_{row['lesion']}"])
        expected = float(roi_samples.mean())
        assert abs(row["centre"] - expected) <= 1e-6 * abs(expected)
        assert abs(row["std"] - float(roi_samples.std())) <= 1e-6 * row["std"]
    t, c, s, _ = _roi_arrays(rows)
    assert torch.allclose(c, torch.tensor([r["centre"] for r in rows], dtype=torch.float64))
    assert not {"covered", "rel_bias", "rel_width"} & set(rows[0])  # derived, not stored
    # rows of the JSON written before the centre was stored carry rel_bias instead: same centre, same summary
    old_rows = [
        {**{k: v for k, v in r.items() if k != "centre"}, "rel_bias": r["centre"] / r["truth"] - 1.0} for r in rows
    ]
    _, c_old, _, _ = _roi_arrays(old_rows)
    assert torch.allclose(c_old, c, rtol=1e-9)
    old_sum, new_sum = roi_summary(old_rows), roi_summary(rows)
    assert old_sum["groups"] == new_sum["groups"] and old_sum["coverage"] == new_sum["coverage"]
    assert old_sum["median_rel_bias"] == pytest.approx(new_sum["median_rel_bias"], rel=1e-9)
    # and the stored centre wins over a rel_bias that disagrees with it
    _, c_new, _, _ = _roi_arrays([{**rows[0], "rel_bias": 5.0}])
    assert float(c_new[0]) == rows[0]["centre"]


def test_benchmark_references_only_run_tunes_map_rdp_on_calibration_phantoms(tmp_path, monkeypatch) -> None:
    import sys

    from benchmarks import pnp_ula_coverage

    out = tmp_path / "refs"
    argv = ["pnp_ula_coverage.py", "--quick", "--methods", "none", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    pnp_ula_coverage.main()
    rep = json.loads((out / "pnp_ula_coverage.json").read_text())
    brain = rep["brain"]
    rdp_grid = brain["map_rdp"]["grid"]  # the benchmark's grid, extended only past an edge optimum
    assert set(rdp_grid) >= {f"{s:g}" for s in pnp_ula_coverage.RDP_STRENGTH_GRID}
    assert rdp_grid[f"{brain['map_rdp']['strength']:g}"] == min(rdp_grid.values())
    osem = brain["osem"]  # iterations tuned with the in-plane FWHM on the calibration phantoms
    assert osem["in_plane"] and osem["fwhm_mm"] == brain["postfilter_fwhm_mm"]
    assert set(osem["grid"]) >= {str(i) for i in pnp_ula_coverage.OSEM_ITERATION_GRID}
    assert osem["grid"][str(osem["iterations"])][f"{osem['fwhm_mm']:g}"] == osem["nrmse"]
    names = list(brain["methods"])
    assert names == [
        f"OSEM + {brain['postfilter_fwhm_mm']:g} mm filter ({osem['iterations']} it)",
        f"MAP-RDP, strength {brain['map_rdp']['strength']:g}",
    ]
    assert all(brain["methods"][n]["datasets"] == 3 and 0 < brain["methods"][n]["nrmse"] < 1 for n in names)
