"""Cross-check: randoms from the delayeds of one mMR list-mode file, SIRF's ``estimate_randoms`` vs ours.

A full Siemens mMR (64 rings, 504 detectors, span 1 list-mode as the scanner writes it) sees only
random coincidences: known singles per crystal (a smooth axial/transaxial pattern times per-crystal
efficiencies) give the expected randoms of every span-1 bin, ``--delayeds`` delayed events are drawn
from them (and as many prompts from an independent draw), and the events are written as a PETLINK
file with our encoder. Then, on the span-11 layout (837 x 252 x 344):

* ours: ``bin_mmr_listmode`` -> ``simulation.randoms.estimate_randoms`` (ML singles, 10 EM iterations);
* SIRF: ``ListmodeToSinograms`` on the same file -> ``estimate_randoms()`` (STIR's ML singles),
  through ``backends.sirf_backend.listmode_to_sinograms``.

Prints totals, the NRMSE of each against the known expected randoms, their NRMSE to each other and
the correlation, and the wall/CPU time of each. Needs SIRF (``source /work/sirfstir/prefix/env.sh``)::

    PYTHONPATH=$PWD:$PYTHONPATH python benchmarks/crosscheck_sirf_randoms.py --delayeds 2e6
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.backends.registry import backend_available
from petuq_sirf.io.mmr_listmode import bin_mmr_listmode, make_layout, write_mmr_listmode
from petuq_sirf.scanner import get_scanner
from petuq_sirf.simulation.listmode_draws import events_from_counts
from petuq_sirf.simulation.randoms import estimate_randoms, randoms_from_singles


def nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delayeds", type=float, default=2e6, help="expected number of delayed events")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="folder for the list-mode file (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(2)
    if not backend_available("sirf"):
        print(json.dumps({"sirf": "skipped (does not import here)"}))
        return
    from petuq_sirf.backends.sirf_backend import acquisition_template, listmode_to_sinograms

    scanner = get_scanner("mMR")
    rng = np.random.default_rng(args.seed)
    rings = np.arange(scanner.num_rings)
    dets = np.arange(scanner.detectors_per_ring)
    pattern = (1.0 - 0.3 * ((rings - rings.mean()) / rings.max()) ** 2)[:, None] * (
        1.0 + 0.2 * np.cos(2 * np.pi * dets / scanner.detectors_per_ring)
    )[None, :]
    singles = torch.as_tensor(pattern * rng.lognormal(0.0, 0.1, pattern.shape))

    span1 = make_layout(scanner, span=1, max_ring_difference=60, view_mashing=1, num_tangential=344)
    span11 = make_layout(scanner, span=11, max_ring_difference=60, view_mashing=1, num_tangential=344)
    t = time.perf_counter()
    expected1 = randoms_from_singles(span1, singles).float()
    scale = args.delayeds / float(expected1.sum(dtype=torch.float64))
    g = torch.Generator().manual_seed(args.seed)
    delayeds1 = torch.poisson(expected1 * scale, generator=g)
    prompts1 = torch.poisson(expected1 * scale, generator=g)
    del expected1
    events = events_from_counts(prompts1, delayeds1, args.duration_s, rng)
    del prompts1, delayeds1
    folder = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="petuq_randoms_"))
    folder.mkdir(parents=True, exist_ok=True)
    header = write_mmr_listmode(folder / "randoms.l.hdr", events, span1, file_span=1)
    n_events = len(events.bins)
    del events
    setup_s = time.perf_counter() - t
    expected11 = randoms_from_singles(span11, singles).float() * scale

    t, c = time.perf_counter(), time.process_time()
    _, delayeds11 = bin_mmr_listmode(header, span11, progress=False)
    ours = estimate_randoms(span11, delayeds11.float())
    ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    tmpl = acquisition_template(span11, folder / "template")
    _, sirf_randoms = listmode_to_sinograms(header, tmpl, span11, 0.0, args.duration_s, folder / "sirf_prompts")
    sirf_s, sirf_cpu = time.perf_counter() - t, time.process_time() - c

    a, b = ours.double().reshape(-1), sirf_randoms.double().reshape(-1)
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    print(
        json.dumps(
            {
                "layout": span11.describe(),
                "events_written": n_events,
                "setup_s": round(setup_s, 1),
                "delayeds_total": float(delayeds11.sum()),
                "expected_total": float(expected11.sum()),
                "ours": {
                    "total": float(ours.sum()),
                    "nrmse_to_expected": nrmse(ours, expected11),
                    "wall_s": round(ours_s, 1),
                    "cpu_s": round(ours_cpu, 1),
                },
                "sirf": {
                    "total": float(sirf_randoms.sum()),
                    "nrmse_to_expected": nrmse(sirf_randoms, expected11),
                    "wall_s": round(sirf_s, 1),
                    "cpu_s": round(sirf_cpu, 1),
                },
                "ours_vs_sirf_nrmse": nrmse(ours, sirf_randoms),
                "ours_vs_sirf_correlation": corr,
                "delayeds_vs_expected_nrmse": nrmse(delayeds11.float(), expected11),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
