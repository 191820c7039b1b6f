"""Time per PnP-ADMM iteration and per unrolled forward pass, and peak memory, 2D and 3D.

Each case runs in its own process so the peak resident memory (``ru_maxrss``) is its own; "extra"
is the peak minus the resident memory after building the model and inputs. On CUDA the peak is
``torch.cuda.max_memory_allocated``. Uses the shipped test-2d weights (for the unrolled network the default,
``fbsem32``; the CNNs act slice by slice, so they run on 3D images too).

    python benchmarks/bench_recon_uq.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("pnp-2d", "pnp-3d", "unrolled-2d", "unrolled-3d")


def _geometry(dim: str):
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner

    if dim == "2d":
        layout = SinogramLayout(get_scanner("test-2d"))
        return layout, ImageGeometry.for_layout(layout)
    scanner = get_scanner("test-3d").with_(num_rings=4)
    return SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=2), ImageGeometry(
        (7, 40, 40), (2.0, 4.0, 4.0)
    )


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(case: str, device: str, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from petuq_sirf.recon import osem
    from petuq_sirf.recon.pnp_admm import PnPADMMConfig, pnp_admm
    from petuq_sirf.recon.weights import load_network as load_weights
    from petuq_sirf.simulation import SimulationConfig, nema_iec_phantom, simulate

    kind, dim = case.split("-")
    layout, image = _geometry(dim)
    sim = simulate(nema_iec_phantom(image), layout, SimulationConfig(true_counts=1e5, seed=0))
    model = sim.acquisition_model(device)
    y = sim.prompts.to(device)
    x0 = osem(model, y, 2, 4).image
    net, _, _ = load_weights("pnp-admm" if kind == "pnp" else "unrolled")
    net.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    with torch.no_grad():
        if kind == "pnp":
            cfg = PnPADMMConfig(num_iterations=repeats)
            pnp_admm(model, y, net, PnPADMMConfig(num_iterations=2), x0=x0)  # warm-up
            sync()
            t = time.perf_counter()
            pnp_admm(model, y, net, cfg, x0=x0)
            sync()
            per = (time.perf_counter() - t) / repeats
        else:
            net(model, y, x0)
            sync()
            t = time.perf_counter()
            for _ in range(repeats):
                net(model, y, x0)
            sync()
            per = (time.perf_counter() - t) / repeats
    peak = _rss_mb()
    out = {
        "case": case,
        "device": device,
        "image": list(image.shape),
        "data": list(layout.shape),
        "seconds": per,
        "peak_rss_mb": peak,
        "extra_rss_mb": peak - base,
    }
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(worker(args.case, args.device, args.threads, args.repeats)))
        return
    rows = []
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--device", args.device, "--threads", str(args.threads)]
        cmd += ["--repeats", str(args.repeats)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    what = {"pnp": "PnP-ADMM iteration (5 inner EM steps + denoiser)", "unrolled": "unrolled forward (K=6)"}
    print(f"device {args.device}, {args.threads} thread(s)")
    print(
        f"| case | image (z,y,x) | data | what | time per call | peak RSS MB | extra MB |{' GPU peak MB |' if args.device != 'cpu' else ''}"
    )
    print(f"|---|---|---|---|---|---|---|{'---|' if args.device != 'cpu' else ''}")
    for r in rows:
        gpu = f" {r['gpu_peak_mb']:.0f} |" if "gpu_peak_mb" in r else ""
        print(
            f"| {r['case']} | {tuple(r['image'])} | {tuple(r['data'])} | {what[r['case'].split('-')[0]]} "
            f"| {1e3 * r['seconds']:.1f} ms | {r['peak_rss_mb']:.0f} | {r['extra_rss_mb']:.1f} |{gpu}"
        )


if __name__ == "__main__":
    main()
