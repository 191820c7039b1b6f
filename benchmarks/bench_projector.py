"""Forward / back projection speed and peak memory of the embedded projector.

Run:  python benchmarks/bench_projector.py [--device cuda] [--full]

For each geometry it prints the time of one forward and one back projection, the process's
peak resident memory, and the throughput in ray-plane samples per second (LORs x image planes
stepped through, each sample a bilinear interpolation), next to a plain reference Joseph
implementation (a Python loop over LORs, numpy over planes) measured in the same run on a
sample of LORs. On CPU the 3D case projects every 6th view and extrapolates. ``--full`` adds the full mMR span-11 geometry (344 x 252 x 837, image
344 x 344 x 127): on CPU one view subset (12 of 252 views) is projected and the full-pass
time is extrapolated (marked "extrap.").
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np


def _reference_joseph(p_a: np.ndarray, p_b: np.ndarray, image: np.ndarray, first, vox) -> np.ndarray:
    """Plain Joseph forward projection: a Python loop over LORs (x-dominant only for brevity)."""
    nz, ny, nx = image.shape
    out = np.zeros(len(p_a))
    xs = first[2] + vox[2] * np.arange(nx)
    for i, (a, b) in enumerate(zip(p_a, p_b, strict=True)):
        d = b - a
        t = (xs - a[0]) / d[0]
        ok = (t >= 0) & (t <= 1)
        y = a[1] + t * d[1]
        z = a[2] + t * d[2]
        fy = (y - first[1]) / vox[1]
        fz = (z - first[0]) / vox[0] if nz > 1 else np.zeros_like(y)
        j0, k0 = np.floor(fy).astype(int), np.floor(fz).astype(int)
        wy, wz = fy - j0, fz - k0
        step = vox[2] * np.linalg.norm(d) / abs(d[0])
        total = 0.0
        for dk, wk in ((0, 1 - wz), (1, wz)) if nz > 1 else ((0, np.ones_like(wz)),):
            for dj, wj in ((0, 1 - wy), (1, wy)):
                kk, jj = k0 + dk, j0 + dj
                valid = ok & (kk >= 0) & (kk < nz) & (jj >= 0) & (jj < ny)
                vals = image[np.clip(kk, 0, nz - 1), np.clip(jj, 0, ny - 1), np.arange(nx)]
                total += float((vals * wk * wj * valid).sum())
        out[i] = total * step
    return out


def _case(name: str, device: str, view_stride: int, queue) -> None:
    import torch

    from petuq_sirf.operators import RayTracingProjector
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

    torch.manual_seed(0)
    if name == "2D test-2d":
        layout = SinogramLayout(get_scanner("test-2d"))
        image = ImageGeometry.for_layout(layout)
    elif name == "2D mMR (1 ring)":
        layout = SinogramLayout(get_scanner("mMR").with_(num_rings=1))
        image = ImageGeometry((1, 344, 344), (2.03125, 2.08626, 2.08626))
    elif name == "3D mMR 8 rings span 3":
        layout = SinogramLayout(get_scanner("mMR").with_(num_rings=8), span=3, max_ring_difference=7)
        image = ImageGeometry.for_layout(layout)
    else:
        layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=60)
        image = ImageGeometry.for_layout(layout)
    views = None if view_stride == 1 else np.arange(0, layout.num_views, view_stride)
    t0 = time.perf_counter()
    proj = RayTracingProjector(layout, image, views=views, device=device)
    setup = time.perf_counter() - t0
    x = torch.rand(image.shape, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    proj.forward(x)  # warm-up
    sync()
    t0 = time.perf_counter()
    y = proj.forward(x)
    sync()
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    proj.adjoint(y)
    sync()
    t_back = time.perf_counter() - t0
    samples = sum(len(rows) * image.shape[axis] for rows, axis in proj._groups)
    # reference on a sample of x-dominant LORs
    rows = proj._groups[0][0][:: max(1, len(proj._groups[0][0]) // 150)][:150].cpu()
    pa, pb = proj._p_a[rows].cpu().double().numpy(), proj._p_b[rows].cpu().double().numpy()
    img = x.cpu().double().numpy()
    first = [image.first_voxel_mm(a) for a in range(3)]
    t0 = time.perf_counter()
    _reference_joseph(pa, pb, img, first, image.voxel_size_mm)
    t_ref = time.perf_counter() - t0
    ref_rate = len(rows) * image.shape[2] / t_ref
    scale = 1 if views is None else layout.num_views / len(views)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    queue.put(
        {
            "geometry": name,
            "sinogram": "x".join(map(str, layout.shape)),
            "image": "x".join(map(str, image.shape)),
            "cached": proj.cached,
            "setup_s": setup,
            "forward_s": t_fwd * scale,
            "back_s": t_back * scale,
            "extrapolated": scale != 1,
            "peak_mb": peak_mb,
            "rate": samples / t_fwd,
            "ref_rate": ref_rate,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="include the full mMR span-11 geometry")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    cases = [("2D test-2d", 1), ("2D mMR (1 ring)", 1), ("3D mMR 8 rings span 3", 1 if on_gpu else 6)]
    if args.full:
        cases.append(("full mMR span 11", 1 if on_gpu else 21))
    ctx = mp.get_context("spawn")
    header = (
        f"{'geometry':24} {'sinogram':>13} {'image':>12} {'cache':>5} {'setup s':>8} {'fwd s':>9} {'back s':>9} "
        f"{'peak MB':>8} {'samples/s':>10} {'ref/s':>9} {'ratio':>6}"
    )
    print(f"device: {args.device}")
    print(header)
    print("-" * len(header))
    for name, stride in cases:
        q = ctx.Queue()
        p = ctx.Process(target=_case, args=(name, args.device, stride, q))
        p.start()
        r = q.get()
        p.join()
        ex = " extrap." if r["extrapolated"] else ""
        print(
            f"{r['geometry']:24} {r['sinogram']:>13} {r['image']:>12} {str(r['cached']):>5} {r['setup_s']:8.2f} "
            f"{r['forward_s']:9.3f} {r['back_s']:9.3f} {r['peak_mb']:8.0f} {r['rate']:10.2e} {r['ref_rate']:9.2e} "
            f"{r['rate'] / r['ref_rate']:6.0f}{ex}"
        )


if __name__ == "__main__":
    main()
