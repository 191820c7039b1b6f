"""``petuq bootstrap``: posterior bootstrap of a list-mode acquisition folder (resumable).

Writes into ``--out``: the replicate store (``bootstrap.json``, ``full_data_map.npy``,
``replicates/``), ``mean``/``std``/``median``/``lower_<level>``/``upper_<level>``/``full_data_map``
NIfTI images, ``metrics.json`` (ROI posteriors; coverage and calibration when the truth is known)
and ``bootstrap.png``. Re-running the same command computes only the missing replicates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.bootstrap import BootstrapConfig, BootstrapProblem, make_executor, run_bootstrap, summarise_store
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
    write_metrics,
)
from petuq_sirf.io.image_io import write_image
from petuq_sirf.uq.calibration import DEFAULT_LEVELS, coverage, evaluate_uq
from petuq_sirf.viz.bootstrap_figures import bootstrap_figure
from petuq_sirf.viz.labels import activity_units


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
        "--iterations", type=int_in(1, 100_000), default=30, help="MAP-RDP iterations per replicate (warm-started)."
    )
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
    p.add_argument("--bias-draws", type=int_in(1, 10_000), default=10, help="Parametric draws K of the bias estimate.")
    p.add_argument(
        "--out", required=True, help="Output folder (re-run to resume; one run at a time: a lock file guards it)."
    )
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_backend_argument(p)
    p.set_defaults(handler=run)


def _body_mask(acq) -> torch.Tensor | None:
    if acq.truth is None:
        return None
    mask = acq.truth > 0
    for region in acq.regions.values():
        mask = mask | region.bool()
    return mask


def run(args: argparse.Namespace) -> int:
    with StoreLock(check_out_dir(args.out, protect=(args.input,))):  # one run per folder, outputs included
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.level < 1:
        raise ValueError(f"--level must be in (0, 1), got {args.level}")
    if args.workers < 1 or args.threads_per_worker < 1:
        raise ValueError("--workers and --threads-per-worker must be >= 1")
    if args.bias_correction != "none" and args.bias_draws < 2:
        raise ValueError(f"--bias-draws must be >= 2, got {args.bias_draws}")
    config = BootstrapConfig(
        num_replicates=args.replicates,
        weights=args.weights,
        seed=args.seed,
        num_iterations=args.iterations,
        prior_strength=args.beta_strength,
        prior_cv=args.prior_cv,
        full_data_iterations=args.full_data_iterations,
    )
    backend = resolve_backend(args.backend)
    out = Path(args.out)
    acq = load_acquisition(args.input)
    problem = BootstrapProblem.from_acquisition(acq, backend)
    t0 = time.perf_counter()
    new = []
    executor = make_executor(args.scheduler, args.workers, args.threads_per_worker)
    try:
        store = run_bootstrap(
            problem,
            config,
            out,
            executor=executor,
            progress=not args.quiet,
            on_replicate=lambda r: new.append(r.index),
            manifest_extra={"input": str(Path(args.input).resolve())},
        )
    finally:
        executor.close()
    seconds = time.perf_counter() - t0
    indices = list(range(config.num_replicates))
    levels = tuple(sorted(set(DEFAULT_LEVELS) | {round(args.level, 4)}))
    regions = {k: v.numpy() for k, v in acq.regions.items()}
    truth = acq.truth.numpy() if acq.truth is not None else None
    summary = summarise_store(store, levels=levels, regions=regions, truth=truth, indices=indices)
    lo, hi = summary.intervals[round(args.level, 4)]
    tag = f"{args.level:.2f}"
    images = {
        "full_data_map": problem.x0.numpy(),
        "mean": summary.mean,
        "std": summary.std,
        "median": summary.median,
        f"lower_{tag}": lo,
        f"upper_{tag}": hi,
    }
    corrected = None
    if args.bias_correction == "parametric":
        from petuq_sirf.bootstrap.bias import bias_corrected_summary, estimate_bias

        estimate = estimate_bias(problem, config, args.bias_draws, folder=out)
        corrected = bias_corrected_summary(summary, estimate, regions, truth)
        clo, chi = corrected.intervals[round(args.level, 4)]
        images.update(
            {
                "bias_estimate": estimate.bias,
                "mean_bias_corrected": corrected.mean,
                f"lower_{tag}_bias_corrected": clo,
                f"upper_{tag}_bias_corrected": chi,
            }
        )
    for name, arr in images.items():
        write_image(out / f"{name}.nii.gz", np.asarray(arr, dtype=np.float32), acq.image)
    metrics: dict = {
        "command": "bootstrap",
        "input": str(args.input),
        "config": {**config.replicate_settings(), "num_replicates": config.num_replicates},
        "scheduler": args.scheduler,
        "replicates": summary.count,
        "new_replicates": len(new),
        "seconds": seconds,
        "replicates_per_minute": 60.0 * len(new) / seconds if new else None,
        "prior": store.manifest().get("prior"),
        "mean_std_in_image": float(summary.std.mean()),
        "roi": summary.roi,
    }
    mask = _body_mask(acq)
    if truth is not None:
        t = torch.from_numpy(truth)
        mean_t, std_t = torch.from_numpy(summary.mean), torch.from_numpy(summary.std)
        metrics["coverage_quantile_intervals"] = {
            f"{lv:.2f}": coverage(
                t, torch.from_numpy(summary.intervals[lv][0]), torch.from_numpy(summary.intervals[lv][1]), mask
            )
            for lv in levels
        }
        metrics["gaussian"] = evaluate_uq(t, mean=mean_t, std=std_t, mask=mask, levels=DEFAULT_LEVELS)
    if corrected is not None:
        body = mask if mask is not None else np.ones(estimate.bias.shape, dtype=bool)
        body = np.asarray(body, dtype=bool)
        block: dict = {
            "method": "parametric bootstrap: bias = mean_k MAP(Poisson(ybar(MAP))) - MAP, mean and intervals shifted",
            "draws": estimate.draws,
            "mean_bias_in_body": float(estimate.bias[body].mean()),
            "mean_abs_bias_in_body": float(np.abs(estimate.bias[body]).mean()),
            "roi": corrected.roi,
        }
        if truth is not None:
            from petuq_sirf.uq.figures_of_merit import nrmse

            block["nrmse_full_data_map"] = float(nrmse(torch.from_numpy(problem.x0.numpy()), t, mask))
            block["nrmse_bias_corrected"] = float(nrmse(torch.from_numpy(corrected.mean.astype(np.float32)), t, mask))
            block["coverage_quantile_intervals"] = {
                f"{lv:.2f}": coverage(
                    t,
                    torch.from_numpy(corrected.intervals[lv][0]),
                    torch.from_numpy(corrected.intervals[lv][1]),
                    mask,
                )
                for lv in levels
            }
            block["gaussian"] = evaluate_uq(
                t,
                mean=torch.from_numpy(corrected.mean),
                std=torch.from_numpy(corrected.std),
                mask=mask,
                levels=DEFAULT_LEVELS,
            )
        metrics["bias_corrected"] = block
    fig_images = {
        f"full-data MAP ({args.full_data_iterations} it)": images["full_data_map"],
        "posterior mean": summary.mean,
        "posterior std": summary.std,
    }
    fig_images[f"{tag} interval width"] = hi - lo
    if corrected is not None:
        fig_images[f"bias-corrected mean (K = {estimate.draws})"] = corrected.mean
    if truth is not None:
        fig_images = {"truth": truth, **fig_images}
    bootstrap_figure(
        fig_images,
        summary.roi,
        out / "bootstrap.png",
        level=args.level,
        title=(
            f"posterior bootstrap, B = {summary.count}, {'Exp(1)' if args.weights == 'exp' else 'Poisson(1)'} "
            f"weights; MAP-RDP {args.iterations} it per replicate ({args.full_data_iterations} full data), "
            f"\u03b2 strength {args.beta_strength:g}, penalty CV {args.prior_cv:g}"
        ),
        units=activity_units(acq.info),
    )
    write_metrics(out, metrics)
    print(f"{summary.count} replicates ({len(new)} new) in {out}")
    return 0
