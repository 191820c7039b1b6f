"""Posterior bootstrap: throughput on 1 and 2 Dask workers, aggregator memory, and validation.

Run:  python benchmarks/bench_bootstrap.py [--part throughput|memory|validation|all] [--quick]

throughput  replicates per minute for a 2D (test-2d, 64 x 64) and a small 3D problem (test-3d,
            4 rings, span 3, 7 x 40 x 40) on a Dask LocalCluster with 1 and with 2 single-threaded
            worker processes, measured in the same run after a warm-up task per worker (which
            builds the projector there); the speed-up is the ratio of the two.
memory      peak Python-heap memory (tracemalloc) of the aggregator over B = 10 and B = 100 stored
            replicates of a 47 x 128 x 128 image (3 MB each): the streaming mean/std, the chunked
            quantiles, and, for comparison, stacking all replicates in memory.
validation  the frequentist protocol at two count levels on test-2d / NEMA: M independent list-mode
            realisations, a bootstrap of B replicates on each, then
            ``petuq_sirf.uq.calibration.frequentist_coverage`` against the truth and against the
            mean of the full-data MAP over realisations (variance-only calibration), and the ratio
            of the mean bootstrap std to the empirical std of the full-data MAP across realisations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.bootstrap import (
    BootstrapConfig,
    BootstrapProblem,
    DaskExecutor,
    ReplicateResult,
    ReplicateStore,
    run_bootstrap,
    store_quantiles,
    summarise_store,
)
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation import nema_iec_phantom, simulate
from petuq_sirf.simulation.simulate import SimulationConfig
from petuq_sirf.uq.calibration import frequentist_coverage


def _problem(kind: str, counts: float, seed: int = 0) -> BootstrapProblem:
    if kind == "2d":
        layout = SinogramLayout(get_scanner("test-2d"))
        image = ImageGeometry.for_layout(layout)
    else:
        layout = SinogramLayout(
            get_scanner("test-3d").with_(num_rings=4), span=3, max_ring_difference=2, view_mashing=2
        )
        image = ImageGeometry((7, 40, 40), (2.0, 4.0, 4.0))
    sim = simulate(nema_iec_phantom(image), layout, SimulationConfig(true_counts=counts, seed=seed, listmode=True))
    return BootstrapProblem.from_acquisition(sim.to_acquisition())


# ----------------------------------------------------------------------------- throughput
def throughput(quick: bool) -> list[dict]:
    rows = []
    cases = [("2d", 3e5, 20, 24 if not quick else 8), ("3d", 3e5, 10, 12 if not quick else 4)]
    for kind, counts, iterations, num in cases:
        problem = _problem(kind, counts)
        cfg = BootstrapConfig(num_replicates=num, num_iterations=iterations, full_data_iterations=20)
        problem.prepare(cfg)
        rates = {}
        for workers in (1, 2):
            with DaskExecutor(num_workers=workers, threads_per_worker=1, processes=True) as ex:
                list(ex.map(problem, cfg, list(range(1000, 1000 + 2 * workers))))  # warm-up: model on every worker
                t0 = time.perf_counter()
                done = list(ex.map(problem, cfg, list(range(num))))
                dt = time.perf_counter() - t0
            assert len(done) == num
            rates[workers] = 60.0 * num / dt
        rows.append(
            {
                "problem": kind,
                "image": "x".join(map(str, problem.image.shape)),
                "events": len(problem.listmode),
                "iterations": iterations,
                "B": num,
                "1 worker rep/min": rates[1],
                "2 workers rep/min": rates[2],
                "speed-up": rates[2] / rates[1],
            }
        )
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- memory
def _fake_store(folder: Path, num: int, shape=(47, 128, 128)) -> ReplicateStore:
    cfg = BootstrapConfig(num_replicates=num)
    store = ReplicateStore.open(folder, cfg, "synthetic", shape)
    rng = np.random.default_rng(0)
    for b in range(num):
        store.save(ReplicateResult(b, rng.gamma(4.0, 0.25, size=shape).astype(np.float32), {"index": b}))
    return store


def memory() -> list[dict]:
    rows = []
    for num in (10, 100):
        with tempfile.TemporaryDirectory() as d:
            store = _fake_store(Path(d), num)
            out = {"B": num, "image MB": float(np.prod((47, 128, 128)) * 4 / 2**20)}
            for name, fn in (
                ("mean/std (Welford)", lambda s=store: summarise_store(s, quantiles=False)),
                ("mean/std + 90% interval (chunked)", lambda s=store: summarise_store(s, levels=(0.9,))),
                ("quantiles only (chunked)", lambda s=store: store_quantiles(s, [0.05, 0.5, 0.95])),
                (
                    "stack all in memory",
                    lambda s=store: np.stack([s.load(b) for b in s.completed()]).astype(np.float64),
                ),
            ):
                tracemalloc.start()
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                out[f"{name} peak MB"] = peak / 2**20
                out[f"{name} s"] = dt
            rows.append(out)
            print(out, flush=True)
    return rows


# ----------------------------------------------------------------------------- validation
def validation(quick: bool) -> list[dict]:
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    phantom = nema_iec_phantom(image)
    body = phantom.activity > 0
    regions = {k: v for k, v in phantom.regions.items() if k in ("background", "hot_sphere_22mm", "cold_sphere_37mm")}
    m_real, num = (6, 8) if quick else (20, 16)
    settings = [(1e5, 30), (1e6, 30)] + ([] if quick else [(1e6, 60)])
    rows = []
    for counts, iterations in settings:
        cfg = BootstrapConfig(num_replicates=num, num_iterations=iterations, full_data_iterations=60)
        model = None
        shifts = {k: [] for k in ("background", "hot_sphere_22mm")}
        samples, maps = [], []
        t0 = time.perf_counter()
        for m in range(m_real):
            sim = simulate(
                phantom, layout, SimulationConfig(true_counts=counts, seed=1000 + m, listmode=True), model=model
            )
            if model is None:
                model = sim.acquisition_model()
            problem = BootstrapProblem.from_acquisition(sim.to_acquisition())
            problem._model = model.with_terms(problem.multiplicative, problem.additive)  # share the projector
            with tempfile.TemporaryDirectory() as d:
                store = run_bootstrap(problem, cfg, d, progress=False)
                samples.append(np.stack([store.load(b) for b in range(num)]))
            maps.append(problem.x0.numpy())
            for k in shifts:  # Markiewicz et al. 2015: shift of the bootstrap mean from the estimate, per ROI
                r = phantom.regions[k].numpy()
                shifts[k].append(abs(samples[-1].mean(0)[r].mean() / maps[-1][r].mean() - 1))
        samples_t = torch.from_numpy(np.stack(samples, axis=1))  # (B, M, z, y, x)
        maps_t = torch.from_numpy(np.stack(maps))
        truth = sim.truth
        vs_truth = frequentist_coverage(truth, samples=samples_t, mask=body, regions=regions)
        vs_mean_map = frequentist_coverage(maps_t.mean(0), samples=samples_t, mask=body)
        gauss = frequentist_coverage(maps_t.mean(0), mean=samples_t.mean(0), std=samples_t.std(0), mask=body)
        boot_std = float(samples_t.std(0).mean(0)[body].mean())
        emp_std = float(maps_t.std(0)[body].mean())
        row = {
            "true counts": counts,
            "iterations": iterations,
            "M": m_real,
            "B": num,
            "coverage 0.90 vs truth": vs_truth["coverage"]["0.90"],
            "coverage 0.50 vs truth": vs_truth["coverage"]["0.50"],
            "cal. error vs truth": vs_truth["calibration_error"],
            "coverage 0.90 vs mean MAP": vs_mean_map["coverage"]["0.90"],
            "coverage 0.50 vs mean MAP": vs_mean_map["coverage"]["0.50"],
            "cal. error vs mean MAP": vs_mean_map["calibration_error"],
            "Gaussian coverage 0.90 vs mean MAP": gauss["coverage"]["0.90"],
            "bootstrap std": boot_std,
            "empirical MAP std": emp_std,
            "std ratio": boot_std / emp_std,
            "mean |bias| of posterior mean": vs_truth["bias"],
            "ROI shift of bootstrap mean bkg %": 100 * float(np.mean(shifts["background"])),
            "ROI shift of bootstrap mean 22mm %": 100 * float(np.mean(shifts["hot_sphere_22mm"])),
            "regions coverage 0.90 vs truth": {
                k: v["coverage"]["0.90"] for k, v in vs_truth.get("regions", {}).items()
            },
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=("throughput", "memory", "validation", "all"))
    parser.add_argument("--quick", action="store_true", help="fewer replicates / realisations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = ("throughput", "memory", "validation") if args.part == "all" else (args.part,)
    for part in parts:
        rows = {
            "throughput": lambda: throughput(args.quick),
            "memory": memory,
            "validation": lambda: validation(args.quick),
        }[part]()
        print(f"\n## {part}\n" + _table(rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
