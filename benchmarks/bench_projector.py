"""CPU-seconds per million LORs and peak memory of the embedded projector's kernels (and STIR's, when present).

Run:  python benchmarks/bench_projector.py [--cases test-2d,mmr-3d,mmr-span11] [--reps 2] [--torch-view-stride 7]
      [--batch N]  (N images per projection call, as the batched solvers use them; STIR is then left out)

Each measurement runs in a fresh (spawned) process: build the projector, one warm-up forward and
back projection (numba's JIT, loaded from its disk cache after the first run), then ``--reps``
timed repetitions; the minimum is reported. Times are process CPU time (``time.process_time``,
all threads added up) divided by the number of LORs, so they are meaningful on a busy machine;
wall-clock times are printed next to them. ``peak MB`` is the child's peak resident set
(``ru_maxrss``), ``+MB`` its increase over the resident set after the imports (the projector's own
memory: tables, image copies, the data and per-thread buffers).

Cases: ``test-2d`` (1 x 64 x 64 LORs), ``mmr-3d`` (mMR, 8 rings, span 3, max ring difference 7,
view mashing 4; image 15 x 285 x 285) and ``mmr-span11`` (mMR span 11, max ring difference 60,
view mashing 4: 837 x 63 x 344 = 18.1 M LORs; image 127 x 285 x 285, 2.08626 mm voxels); ``test-3d``
(64 x 48 x 48 LORs, image 15 x 48 x 48) and ``test-3d-4rings`` (16 x 48 x 48, image 7 x 48 x 48), the
confidence-set benchmark's 3D cases. ``matrix`` is the cached sparse system matrix (torch CSR), measured
on the small cases only. The plain
torch kernel is measured on every ``--torch-view-stride``-th view of ``mmr-span11`` (per-LOR cost
extrapolated, marked ``subset``); everything else projects all LORs. STIR's ray-tracing projector
(``ProjMatrixByBinUsingRayTracing``) is interleaved when ``import stir`` works; the ratio column is
then against STIR, otherwise against the plain-torch kernel of the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

import numpy as np


def _geometry(case: str):
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

    if case == "test-2d":
        layout = SinogramLayout(get_scanner("test-2d"))
        return layout, ImageGeometry.for_layout(layout)
    if case in ("test-3d", "test-3d-4rings"):  # the confidence-set benchmark's 3D cases (span 1, all ring differences)
        scanner = get_scanner("test-3d")
        if case == "test-3d-4rings":
            scanner = scanner.with_(name="test-3d-4rings", num_rings=4)
        layout = SinogramLayout(scanner)
        return layout, ImageGeometry.for_layout(layout)
    if case == "mmr-3d":
        layout = SinogramLayout(get_scanner("mMR").with_(num_rings=8), span=3, max_ring_difference=7, view_mashing=4)
        return layout, ImageGeometry.for_layout(layout, num_xy=285)
    if case == "mmr-span11":
        layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=60, view_mashing=4)
        return layout, ImageGeometry.for_layout(layout, num_xy=285)
    raise SystemExit(f"bench_projector: error: unknown case {case!r}")


MATRIX_CASES = ("test-2d", "test-3d-4rings", "test-3d")  # small enough for the sparse system matrix


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def _measure(case: str, peer: str, threads: int, view_stride: int, reps: int, batch: int, queue) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    layout, image = _geometry(case)
    views = None if view_stride == 1 else np.arange(0, layout.num_views, view_stride)
    base_mb = _rss_mb()
    t0 = time.process_time()
    if peer == "stir":
        from petuq_sirf.backends.stir_backend import StirAcquisitionModel

        # one ray per bin: STIR's own default and the same single-ray Joseph sampling as ours
        # (the backend's default of 2, matching SIRF, would double STIR's cost)
        model = StirAcquisitionModel(layout, image, num_tangential_lors=1)
        fwd, back = model._geometric_np, model._geometric_adjoint_np
        n_lors = layout.num_bins
        x = np.random.default_rng(0).random(image.shape, dtype=np.float32)
        path = "STIR ray tracing, 1 ray/bin"
    else:
        from petuq_sirf.operators import RayTracingProjector

        matrix = peer == "matrix"  # the cached sparse system matrix (torch CSR)
        proj = RayTracingProjector(layout, image, views=views, kernel="torch" if matrix else peer, cache=matrix)
        fwd, back = proj.forward, proj.adjoint
        n_lors = proj.num_lors * batch  # a batch of images projected in one call counts all its LORs
        x = torch.rand((batch, *image.shape) if batch > 1 else image.shape)
        path = proj.path
    setup = time.process_time() - t0
    c = time.process_time()
    y = fwd(x)
    back(y)  # warm-up (JIT / caches)
    inner = max(1, int(0.5 / max(time.process_time() - c, 1e-6)))  # small cases: repeat to >= 0.5 CPU-s
    cpu_f, cpu_b, wall_f, wall_b = [], [], [], []
    for _ in range(reps):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(inner):
            y = fwd(x)
        c1, w1 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            back(y)
        c2, w2 = time.process_time(), time.perf_counter()
        cpu_f.append((c1 - c) / inner)
        cpu_b.append((c2 - c1) / inner)
        wall_f.append((w1 - w) / inner)
        wall_b.append((w2 - w1) / inner)
    m = n_lors / 1e6
    queue.put(
        {
            "case": case,
            "peer": peer,
            "path": path,
            "threads": threads,
            "lors_m": m,
            "subset": view_stride != 1,
            "setup_s": setup,
            "fwd": min(cpu_f) / m,
            "back": min(cpu_b) / m,
            "fwd_wall": min(wall_f) / m,
            "back_wall": min(wall_b) / m,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "own_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb,
        }
    )


def _run(ctx, *args) -> dict | None:
    """Run one measurement in a spawned child; ``None`` (with the exit code printed) if it died."""
    import queue as _queue

    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(*args, q))
    p.start()
    while True:
        try:
            r = q.get(timeout=5)
            break
        except _queue.Empty:
            if not p.is_alive():
                print(
                    f"bench_projector: {args[0]} {args[1]} ({args[2]} threads) died, exit code {p.exitcode}", flush=True
                )
                return None
    p.join()
    return r


def _stir_available() -> bool:
    try:
        import stir  # noqa: F401
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="test-2d,mmr-3d,mmr-span11", help="comma-separated cases")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions (the minimum is reported)")
    parser.add_argument("--torch-view-stride", type=int, default=7, help="view subset for torch on mmr-span11")
    parser.add_argument("--no-torch", action="store_true", help="skip the plain-torch kernel")
    parser.add_argument(
        "--peers",
        default="stir,torch,numba,matrix",
        help="comma-separated subset of stir,torch,numba,matrix (matrix: the cached sparse system matrix, small cases)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images per projection call (our kernels; times are per M LORs of the batch)",
    )
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    from petuq_sirf.operators.kernels import help_line

    has_stir = _stir_available()
    print(help_line())
    print(f"STIR: {'import stir works: interleaved' if has_stir else 'not importable (ratio against plain torch)'}")
    print(f"CPUs: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (CPU time per M LORs; wall time next to it)")
    ctx = mp.get_context("spawn")
    header = (
        f"{'case':11} {'kernel / path':34} {'thr':>3} {'M LORs':>7} {'setup s':>7} {'fwd CPU-s/M':>11} "
        f"{'back CPU-s/M':>12} {'fwd wall':>8} {'back wall':>9} {'peak MB':>7} {'+MB':>5} {'ratio f/b':>11}"
    )
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        runs: list[dict] = []
        peers = [("numba", 1, 1), ("numba", 2, 1)] if "numba" in args.peers else []
        if has_stir and "stir" in args.peers:
            peers.insert(0, ("stir", 1, 1))
        if not args.no_torch and "torch" in args.peers:
            peers.insert(1 if has_stir else 0, ("torch", 1, args.torch_view_stride if case == "mmr-span11" else 1))
        if "matrix" in args.peers and case in MATRIX_CASES:
            peers += [("matrix", 1, 1), ("matrix", 2, 1)]
        for peer, threads, stride in peers:  # the reference first, so each row prints as soon as it is measured
            if peer == "stir" and args.batch > 1:
                continue  # STIR's projector takes one image at a time
            r = _run(ctx, case, peer, threads, stride, args.reps, args.batch)
            if r is None:
                continue
            runs.append(r)
            ref = runs[0] if runs[0]["peer"] in ("stir", "torch") and runs[0] is not r else None
            ratio = f"{r['fwd'] / ref['fwd']:.2f}/{r['back'] / ref['back']:.2f}" if ref else "-"
            label = f"{r['peer']}: {r['path']}" + (" (subset)" if r["subset"] else "")
            print(
                f"{r['case']:11} {label[:34]:34} {r['threads']:3d} {r['lors_m']:7.2f} {r['setup_s']:7.2f} "
                f"{r['fwd']:11.3f} {r['back']:12.3f} {r['fwd_wall']:8.3f} {r['back_wall']:9.3f} "
                f"{r['peak_mb']:7.0f} {r['own_mb']:5.0f} {ratio:>11}",
                flush=True,
            )
        one = next((r for r in runs if r["peer"] == "numba" and r["threads"] == 1), None)
        two = next((r for r in runs if r["peer"] == "numba" and r["threads"] == 2), None)
        if one and two:
            print(
                f"{'':11} numba 2 threads vs 1: wall speed-up fwd {one['fwd_wall'] / two['fwd_wall']:.2f}x, "
                f"back {one['back_wall'] / two['back_wall']:.2f}x (meaningful only on an idle machine)",
                flush=True,
            )


if __name__ == "__main__":
    main()
