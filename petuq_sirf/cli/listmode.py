"""``petuq listmode``: real list-mode data (Siemens mMR PETLINK ``.l.hdr`` or PETSIRD) -> an acquisition folder.

The folder holds the binned prompts and delayeds, the randoms estimated from the delayeds,
``m`` = normalisation x attenuation factors (from ``--norm`` and ``--mu-map`` when given)
and ``b`` = randoms (plus ``--scatter`` if given), and the events themselves, so that
``petuq reconstruct`` and the list-mode bootstrap work on it directly. The pipeline is
:func:`petuq_sirf.pipelines.listmode.acquisition_from_listmode`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petuq_sirf.cli.common import check_out_dir, float_in, int_in, save_acquisition, write_metrics
from petuq_sirf.pipelines.listmode import acquisition_from_listmode
from petuq_sirf.scanner import get_scanner


def register(sub) -> None:
    p = sub.add_parser("listmode", help="bin mMR (.l.hdr) or PETSIRD list-mode into an acquisition folder")
    p.add_argument("input", help="Siemens mMR list-mode header (.l.hdr, STIR's .l.hdr.STIR) or a PETSIRD file.")
    p.add_argument("--scanner", default=None, help="Scanner name when the file does not identify it (e.g. test-3d).")
    p.add_argument(
        "--span", type=int_in(1, 1000), default=None, help="Axial compression of the sinograms (mMR default 11)."
    )
    p.add_argument(
        "--max-ring-difference",
        type=int_in(0, 1000),
        default=None,
        help="Largest ring difference kept (mMR default 60, otherwise the file's).",
    )
    p.add_argument("--view-mashing", type=int_in(1, 64), default=1, help="Views combined into one (1 = none).")
    p.add_argument("--start-s", type=float_in(0), default=None, help="Keep events from this time (s).")
    p.add_argument("--stop-s", type=float_in(0), default=None, help="Keep events before this time (s).")
    p.add_argument(
        "--frame", type=int_in(1, 100_000), default=None, help="Keep the events of the header's time frame K (1-based)."
    )
    p.add_argument("--mu-map", default=None, help="Mu-map in 1/cm (.hv, .nii, .nii.gz); sets the image grid.")
    p.add_argument("--norm", default=None, help="Detector efficiencies per bin (.hs in the output layout).")
    p.add_argument("--scatter", default=None, help="Scatter estimate in counts (.hs in the output layout).")
    p.add_argument("--image-size", type=int_in(1, 2048), default=128, help="Voxels in x and y when there is no mu-map.")
    p.add_argument(
        "--voxel-size-mm",
        type=float_in(0.01, 100),
        default=4.0,
        help="In-plane voxel size in mm when there is no mu-map.",
    )
    p.add_argument("--no-events", action="store_true", help="Do not store the events (large files).")
    p.add_argument("--out", required=True, help="Output acquisition folder.")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"list-mode file {path} does not exist")
    scanner = get_scanner(args.scanner) if args.scanner else None
    check_out_dir(args.out, writes_acquisition=True)
    acq = acquisition_from_listmode(
        path,
        scanner,
        span=args.span,
        max_ring_difference=args.max_ring_difference,
        view_mashing=args.view_mashing,
        start_s=args.start_s,
        stop_s=args.stop_s,
        frame=args.frame,
        mu_map=args.mu_map,
        norm=args.norm,
        scatter=args.scatter,
        image_size=args.image_size,
        voxel_size_mm=args.voxel_size_mm,
        keep_events=not args.no_events,
        progress=not args.quiet,
    )
    save_acquisition(acq, args.out)
    write_metrics(args.out, {"command": "listmode", **acq.info})
    total = int(acq.prompts.sum() + acq.delayeds.sum())
    print(f"petuq listmode: {total} events -> {acq.layout.describe()} in {args.out}")
    return 0
