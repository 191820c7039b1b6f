"""``petuq listmode``: real list-mode data (Siemens mMR PETLINK ``.l.hdr`` or PETSIRD) -> an acquisition folder.

The folder holds the binned prompts and delayeds, the randoms estimated from the delayeds,
``m`` = normalisation x attenuation factors (from ``--norm`` and ``--mu-map`` when given)
and ``b`` = randoms (plus ``--scatter`` if given), and the events themselves, so that
``petuq reconstruct`` and the list-mode bootstrap work on it directly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petuq_sirf.cli.common import check_out_dir, float_in, int_in, save_acquisition, write_metrics
from petuq_sirf.io.mmr_listmode import (
    DecodeStats,
    bin_mmr_listmode,
    is_mmr_header,
    make_layout,
    read_mmr_header,
    read_mmr_listmode,
)
from petuq_sirf.io.petsird_io import PetsirdInfo, read_petsird
from petuq_sirf.pipelines.listmode import acquisition_from_sinograms
from petuq_sirf.scanner import SinogramLayout, get_scanner


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
    start = None if args.start_s is None else 1000.0 * args.start_s
    stop = None if args.stop_s is None else 1000.0 * args.stop_s
    info: dict = {"source": str(path)}
    if args.frame is not None and (args.start_s is not None or args.stop_s is not None):
        raise ValueError("give either --frame or --start-s/--stop-s, not both")
    if is_mmr_header(path):
        header = read_mmr_header(path, scanner=scanner)
        if args.frame is not None:
            start, stop = header.frame_ms(args.frame)
        is_mmr = header.scanner.name == "Siemens mMR"
        span = args.span if args.span is not None else (11 if is_mmr else header.span)
        max_rd = args.max_ring_difference
        if max_rd is None:
            max_rd = min(60, header.max_ring_difference) if is_mmr else header.max_ring_difference
        layout = make_layout(header.scanner, span, max_rd, args.view_mashing, header.num_projections)
        stats = DecodeStats()
        if args.no_events:  # stream: only the two sinograms are kept
            prompts, delayeds = bin_mmr_listmode(header, layout, start, stop, progress=not args.quiet, stats=stats)
            events = None
        else:
            events = read_mmr_listmode(header, layout, start, stop, progress=not args.quiet, stats=stats)
        info.update(format="Siemens PETLINK 32-bit", time_tags=stats.time_tags, dropped_events=stats.dropped)
        first_ms, last_ms = stats.first_time_ms, stats.last_time_ms
        if events is None and stats.prompts + stats.delayeds == 0:
            raise ValueError(f"{path}: no events in the selected time interval")
    else:
        if args.frame is not None:
            raise ValueError("--frame needs a list-mode header with time frames (Siemens .l.hdr)")
        if scanner is None and (args.span or args.max_ring_difference or args.view_mashing != 1):
            raise ValueError("give --scanner with --span/--max-ring-difference/--view-mashing for PETSIRD input")
        layout = None
        if scanner is not None:
            layout = make_layout(scanner, args.span or 1, args.max_ring_difference, args.view_mashing)
        pinfo = PetsirdInfo(scanner)
        events = read_petsird(path, layout, pinfo)
        layout = layout or SinogramLayout(pinfo.scanner)
        if start is not None or stop is not None:
            events = events.select_time(start or 0.0, stop if stop is not None else float("inf"))
        info.update(format="PETSIRD")
    if events is not None:
        if len(events) == 0:
            raise ValueError(f"{path}: no events in the selected time interval")
        prompts = events.histogram(prompts=True)
        delayeds = events.histogram(prompts=False)
        first_ms, last_ms = float(events.times_ms.min()), float(events.times_ms.max())
    acq = acquisition_from_sinograms(
        layout,
        prompts,
        delayeds,
        info,
        events=None if args.no_events else events,
        first_event_ms=first_ms,
        last_event_ms=last_ms,
        mu_map=args.mu_map,
        norm=args.norm,
        scatter=args.scatter,
        image_size=args.image_size,
        voxel_size_mm=args.voxel_size_mm,
        progress=not args.quiet,
    )
    save_acquisition(acq, args.out)
    write_metrics(args.out, {"command": "listmode", **info})
    total = int(prompts.sum() + delayeds.sum())
    print(f"petuq listmode: {total} events -> {layout.describe()} in {args.out}")
    return 0
