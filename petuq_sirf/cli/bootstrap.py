"""``petuq bootstrap``: posterior bootstrap of a list-mode acquisition folder (resumable).

Writes into ``--out``: the replicate store (``bootstrap.json``, ``full_data_map.npy``,
``replicates/``), ``mean``/``std``/``median``/``lower_<level>``/``upper_<level>``/``full_data_map``
NIfTI images, ``metrics.json`` (ROI posteriors; coverage and calibration when the truth is known)
and ``bootstrap.png``. Re-running the same command computes only the missing replicates. The run is
:func:`petuq_sirf.pipelines.bootstrap.bootstrap_acquisition`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petuq_sirf.bootstrap import BootstrapConfig
from petuq_sirf.bootstrap.store import StoreLock
from petuq_sirf.cli.common import (
    LEVEL,
    SEED,
    add_backend_argument,
    check_out_dir,
    float_in,
    int_in,
    load_acquisition,
    resolve_backend,
)
from petuq_sirf.pipelines.bootstrap import bootstrap_acquisition


def register(sub) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="posterior bootstrap of a list-mode acquisition (mean/std/interval images, ROI posteriors)",
    )
    p.add_argument(
        "input", help="Acquisition folder with list-mode events ('petuq simulate --listmode', 'petuq listmode')."
    )
    p.add_argument("--replicates", type=int_in(1, 1_000_000), default=100, help="Number of bootstrap replicates B.")
    p.add_argument(
        "--weights",
        default="exp",
        choices=("exp", "poisson"),
        help="Event weights: Exp(1) (Bayesian bootstrap) or Poisson(1) (classical).",
    )
    p.add_argument(
        "--scheduler",
        default="none",
        help="Where replicates run: none (in-process), processes (local pool), local-dask (Dask LocalCluster) "
        "or tcp://HOST:PORT (a Dask scheduler).",
    )
    p.add_argument("--workers", type=int_in(1, 4096), default=2, help="Workers of a local pool / LocalCluster.")
    p.add_argument("--threads-per-worker", type=int_in(1, 1024), default=1, help="Torch threads in each worker.")
    p.add_argument(
        "--estimator",
        default="map-rdp",
        choices=("map-rdp", "osem"),
        help="Estimator each replicate repeats: MAP-RDP (warm-started from the full-data MAP) or unfiltered OSEM "
        "from a uniform image (less biased lesion ROI means, noisier voxels; the prior options are unused).",
    )
    p.add_argument(
        "--iterations",
        type=int_in(1, 100_000),
        default=None,
        help="Iterations per replicate: MAP-RDP iterations (default 30) or OSEM passes (default 5).",
    )
    p.add_argument("--subsets", type=int_in(1, 10_000), default=8, help="OSEM subsets (--estimator osem).")
    p.add_argument(
        "--full-data-iterations",
        type=int_in(1, 100_000),
        default=60,
        help="MAP-RDP iterations of the full-data estimate.",
    )
    p.add_argument(
        "--beta-strength", type=float_in(0, 1e6), default=0.01, help="RDP strength relative to the mean sensitivity."
    )
    p.add_argument(
        "--prior-cv",
        type=float_in(0, 10),
        default=0.1,
        help="Coefficient of variation of the random penalty factor.",
    )
    p.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="Base seed of the event weights and penalty factors (replicate b draws from seed and b).",
    )
    p.add_argument("--level", type=LEVEL, default=0.9, help="Credible level of the interval images.")
    p.add_argument(
        "--bias-correction",
        default="none",
        choices=("none", "parametric"),
        help="Parametric: estimate the full-data MAP's bias from MAPs of Poisson(ybar(MAP)) draws and shift the "
        "mean and intervals by it (extra *_bias_corrected outputs).",
    )
    p.add_argument(
        "--roi-calibration",
        default=None,
        help="ROI calibration (the output folder of 'petuq calibrate-roi', or its roi_calibration.json): adds "
        "ROI-conformal intervals of the lesion ROIs to metrics.json (roi_conformal); the run's bootstrap settings "
        "must be the calibration's.",
    )
    p.add_argument(
        "--voxel-calibration",
        default=None,
        help="Voxel calibration (the output folder of 'petuq calibrate-voxels', or its voxel_calibration.json): "
        "adds class-conformal interval images (lower/upper_<level>_calibrated), std_calibrated and voxel_class; the "
        "run's bootstrap settings must be the calibration's.",
    )
    p.add_argument("--bias-draws", type=int_in(1, 10_000), default=10, help="Parametric draws K of the bias estimate.")
    p.add_argument(
        "--out", required=True, help="Output folder (re-run to resume; one run at a time: a lock file guards it)."
    )
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_backend_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with StoreLock(check_out_dir(args.out, protect=(args.input,))):  # one run per folder, outputs included
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    config = BootstrapConfig(
        num_replicates=args.replicates,
        weights=args.weights,
        seed=args.seed,
        num_iterations=args.iterations or (5 if args.estimator == "osem" else 30),
        prior_strength=args.beta_strength,
        prior_cv=args.prior_cv,
        full_data_iterations=args.full_data_iterations,
        estimator=args.estimator,
        num_subsets=args.subsets,
    )
    backend = resolve_backend(args.backend)
    roi_calibration = None
    if args.roi_calibration:
        from petuq_sirf.pipelines.roi_calibration import load_roi_calibration

        roi_calibration = load_roi_calibration(args.roi_calibration)
    voxel_calibration = None
    if args.voxel_calibration:
        from petuq_sirf.pipelines.voxel_calibration import load_voxel_calibration

        voxel_calibration = load_voxel_calibration(args.voxel_calibration)
    acq = load_acquisition(args.input)
    result = bootstrap_acquisition(
        acq,
        config,
        args.out,
        backend=backend,
        scheduler=args.scheduler,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        level=args.level,
        bias_correction=args.bias_correction,
        bias_draws=args.bias_draws,
        progress=not args.quiet,
        input_name=str(args.input),
        manifest_extra={"input": str(Path(args.input).resolve())},
        roi_calibration=roi_calibration,
        voxel_calibration=voxel_calibration,
    )
    result.write(args.out)
    print(f"{result.metrics['replicates']} replicates ({result.metrics['new_replicates']} new) in {args.out}")
    return 0
