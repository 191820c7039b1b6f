"""Cross-check: the same small mMR-subset acquisition reconstructed by OSEM on the embedded, STIR and SIRF backends.

Prints, per external backend, the ratio of total activity and the NRMSE against the embedded image
(OSEM, same data, same terms, same subsets), the NRMSE of the projection of the phantom, and the
projector settings (``--rays`` sets the rays per bin on both external backends). The embedded
reference is the STIR-matched model: STIR's axial tube (``operators/axial_tube.py``), exact
intersection lengths with the same rays per bin (``ray_model="siddon"``, ``operators/siddon.py``);
the NRMSE against the embedded Joseph projector with the tube, and against the embedded default
(Joseph, one line per bin), are reported too. Backends that do not import are reported as skipped.
Run with SIRF/STIR importable, e.g.

    source /work/sirfstir/prefix/env.sh   # a build from ../shared/tools/build_sirf_stir.sh
    PYTHONPATH=$PWD:$PYTHONPATH python benchmarks/crosscheck_sirf_stir.py --rings 4 --iterations 5 --subsets 7

Geometry: the first ``--rings`` rings of the Siemens mMR, span 1, views mashed by 2, 127 tangential
bins; image 7 x 127 x 127 voxels of 2.03 x 2.5 x 2.5 mm (odd: exchanged with STIR unchanged).
Phantom: the NEMA IEC-like phantom of ``petuq simulate``; Poisson data at ``--counts`` trues.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from petuq_sirf.backends.bridge import DEFAULT_RAYS_PER_BIN
from petuq_sirf.backends.registry import backend_available, make_acquisition_model
from petuq_sirf.recon import osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rings", type=int, default=4)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--subsets", type=int, default=7)
    p.add_argument("--counts", type=float, default=2e6)
    p.add_argument("--rays", type=int, default=None, help="rays per bin on both external backends (default: ours)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    scanner = get_scanner("mMR").with_(num_rings=args.rings)
    layout = SinogramLayout(scanner, span=1, view_mashing=2, num_tangential_bins=127)
    nz = 2 * args.rings - 1
    image = ImageGeometry((nz, 127, 127), (scanner.ring_spacing_mm / 2, 2.5, 2.5))
    zz, yy, xx = image.meshgrid_mm(torch.float32)
    truth = ((yy**2 + xx**2) <= 100.0**2).float()
    truth += 3.0 * (((yy - 30.0) ** 2 + (xx - 20.0) ** 2) <= 15.0**2).float()
    truth -= 0.8 * (((yy + 35.0) ** 2 + (xx + 10.0) ** 2) <= 20.0**2).float()
    g = torch.Generator().manual_seed(args.seed)
    m = 0.8 + 0.4 * torch.rand(layout.shape, generator=g)
    rays = DEFAULT_RAYS_PER_BIN if args.rays is None else args.rays
    matched = {"axial_model": "tube", "ray_model": "siddon", "rays_per_bin": rays}
    others = {"joseph_tube": {"axial_model": "tube"}, "joseph_line": {}}
    emb = make_acquisition_model("embedded", layout, image, m, **matched)
    ideal = emb.forward(truth)
    b = 0.1 * torch.ones(layout.shape) * float(ideal.mean())
    emb = emb.with_terms(additive=b)
    y = torch.poisson((emb.forward(truth)) * (args.counts / float(ideal.sum())), generator=g)
    scale = args.counts / float(ideal.sum())
    emb = emb.with_terms(multiplicative=m * scale, additive=b * scale)
    results = {}
    t = time.process_time()
    ref = osem(emb, y, args.iterations, args.subsets).image
    results["embedded"] = {
        "cpu_s": round(time.process_time() - t, 1),
        "total": float(ref.sum()),
        "projector": emb.projector_settings(),
    }
    ref_other = {
        name: osem(
            make_acquisition_model("embedded", layout, image, m * scale, b * scale, **o),
            y,
            args.iterations,
            args.subsets,
        ).image
        for name, o in others.items()
    }
    g_ref = make_acquisition_model("embedded", layout, image, **matched).forward(truth)
    options = {} if args.rays is None else {"num_tangential_lors": args.rays}
    for name in ("stir", "sirf"):
        if not backend_available(name):
            results[name] = "skipped (does not import here)"
            continue
        model = make_acquisition_model(name, layout, image, m * scale, b * scale, **options)
        t = time.process_time()
        rec = osem(model, y, args.iterations, args.subsets).image
        g_ext = make_acquisition_model(name, layout, image, **options).forward(truth)
        results[name] = {
            "cpu_s": round(time.process_time() - t, 1),
            "total_ratio_to_embedded": float(rec.sum() / ref.sum()),
            "nrmse_to_embedded": float(torch.linalg.norm(rec - ref) / torch.linalg.norm(ref)),
            **{
                f"nrmse_to_embedded_{name}": float(torch.linalg.norm(rec - r) / torch.linalg.norm(r))
                for name, r in ref_other.items()
            },
            "projection_of_phantom_nrmse": float(torch.linalg.norm(g_ext - g_ref) / torch.linalg.norm(g_ref)),
            "projector": model.projector_settings(),
        }
    if all(isinstance(results.get(k), dict) for k in ("stir", "sirf")):
        s = make_acquisition_model("stir", layout, image, **options).forward(truth)
        f = make_acquisition_model("sirf", layout, image, **options).forward(truth)
        results["stir_vs_sirf_projection_nrmse"] = float(torch.linalg.norm(s - f) / torch.linalg.norm(f))
    print(json.dumps({"layout": layout.describe(), "image": list(image.shape), **results}, indent=2))


if __name__ == "__main__":
    main()
