"""Posterior bootstrap of PET images from one list-mode acquisition (Filipovic et al. 2021).

Random per-event weights plus a random penalty, one MAP-RDP reconstruction per replicate, run
in-process, on a local process pool or on a Dask cluster, stored replicate by replicate and
aggregated in a streaming fashion. See ``docs/posterior_bootstrap.md``.
"""

from petuq_sirf.bootstrap.aggregate import (
    BootstrapSummary,
    RunningMoments,
    roi_posterior,
    store_quantiles,
    summarise_store,
)
from petuq_sirf.bootstrap.executors import (
    SCHEDULERS,
    DaskExecutor,
    InProcessExecutor,
    ProcessPoolExecutor,
    make_executor,
)
from petuq_sirf.bootstrap.replicate import (
    BootstrapConfig,
    BootstrapProblem,
    ReplicateResult,
    replicate_draws,
    run_replicate,
    weighted_data,
)
from petuq_sirf.bootstrap.runner import prepare_problem, run_bootstrap
from petuq_sirf.bootstrap.store import ReplicateStore
from petuq_sirf.bootstrap.weights import (
    WEIGHT_KINDS,
    check_weights,
    draw_weights,
    replicate_int_seed,
    replicate_rng,
    replicate_seed_sequence,
)

__all__ = [
    "SCHEDULERS",
    "WEIGHT_KINDS",
    "BootstrapConfig",
    "BootstrapProblem",
    "BootstrapSummary",
    "DaskExecutor",
    "InProcessExecutor",
    "ProcessPoolExecutor",
    "ReplicateResult",
    "ReplicateStore",
    "RunningMoments",
    "check_weights",
    "draw_weights",
    "make_executor",
    "prepare_problem",
    "replicate_draws",
    "replicate_int_seed",
    "replicate_rng",
    "replicate_seed_sequence",
    "roi_posterior",
    "run_bootstrap",
    "run_replicate",
    "store_quantiles",
    "summarise_store",
    "weighted_data",
]
