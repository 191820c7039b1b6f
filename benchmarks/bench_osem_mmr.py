"""Wall and CPU time of OSEM on a full Siemens mMR span-11 acquisition with the embedded backend.

Run:  python benchmarks/bench_osem_mmr.py [--iterations 3] [--subsets 21] [--threads 2] [--num-xy 344]

Geometry: mMR span 11, maximum ring difference 60, no view mashing: 837 x 252 x 344 = 72.6 M LORs;
image 127 x 344 x 344 voxels (2.03 x 2.09 x 2.09 mm), STIR's default mMR image. Data: Poisson
counts of the NEMA IEC-like phantom, ``--counts`` expected trues, a multiplicative term drawn
uniformly in 0.3-0.5 per bin (standing in for attenuation x normalisation: its values do not change the cost)
and a flat additive term of 20 % of the mean. Timed: the whole ``osem`` call, i.e. building the
``--subsets`` subset projectors, their sensitivity images and ``--iterations`` full passes; the data
simulation (one forward projection) is setup and reported separately. Peak memory is the process's
resident high-water mark. The issue-12 target is <= 5 min wall on 2 CPU cores for 3 x 21.
"""

from __future__ import annotations

import argparse
import os
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--subsets", type=int, default=21)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-xy", type=int, default=344, help="in-plane image size (voxels of the bin size)")
    p.add_argument("--counts", type=float, default=5e7, help="expected true counts")
    p.add_argument("--view-mashing", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from petuq_sirf.backends.registry import make_acquisition_model
    from petuq_sirf.operators.kernels import describe, select_kernel, set_num_threads
    from petuq_sirf.recon import osem
    from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
    from petuq_sirf.simulation.phantoms import nema_iec_phantom

    set_num_threads(args.threads)
    layout = SinogramLayout(get_scanner("mMR"), span=11, max_ring_difference=60, view_mashing=args.view_mashing)
    image = ImageGeometry.for_layout(layout, num_xy=args.num_xy)
    t0, c0 = time.perf_counter(), time.process_time()
    truth = nema_iec_phantom(image).activity
    gen = torch.Generator().manual_seed(0)
    m = 0.3 + 0.2 * torch.rand(layout.shape, generator=gen)
    model = make_acquisition_model("embedded", layout, image, m)
    ideal = model.forward(truth)
    scale = args.counts / float(ideal.sum())
    b = torch.full(layout.shape, 0.2 * float(ideal.mean()) * scale)
    model = model.with_terms(multiplicative=m * scale, additive=b)
    y = torch.poisson(ideal * scale + b, generator=gen)
    del ideal
    setup_wall, setup_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"mMR span 11: {layout.shape} = {layout.num_bins / 1e6:.1f} M LORs, image {image.shape}, "
        f"{float(y.sum()):.3g} prompts; {describe(select_kernel())}; setup {setup_wall:.1f} s wall / {setup_cpu:.1f} CPU-s",
        flush=True,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    x = osem(model, y, args.iterations, args.subsets).image
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rel = float(((x - truth) ** 2).sum().sqrt() / (truth**2).sum().sqrt())
    print(
        f"OSEM {args.iterations} x {args.subsets}: {wall:.1f} s wall, {cpu:.1f} CPU-s, peak RSS {peak:.0f} MB; "
        f"total activity ratio {float(x.sum() / truth.sum()):.4f}, NRMSE vs truth {rel:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
