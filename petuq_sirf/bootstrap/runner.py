"""Run a bootstrap into a resumable store: compute only the missing replicates, write each atomically."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from petuq_sirf.bootstrap.executors import Executor, InProcessExecutor
from petuq_sirf.bootstrap.replicate import BootstrapConfig, BootstrapProblem, ReplicateResult
from petuq_sirf.bootstrap.store import ReplicateStore, StoreLock
from petuq_sirf.recon import RelativeDifferencePrior


def _prior_to_dict(prior: RelativeDifferencePrior) -> dict:
    if prior.kappa is not None:
        raise ValueError("a spatially varying RDP kappa cannot be recorded in the bootstrap manifest")
    d = asdict(prior)
    d.pop("kappa")
    return d


def prepare_problem(problem: BootstrapProblem, config: BootstrapConfig, store: ReplicateStore) -> None:
    """Give ``problem`` its prior and full-data MAP: from the store when resuming, else computed and saved.

    Reusing the stored ones makes a resumed run bit-identical to an uninterrupted one.
    """
    manifest = store.manifest()
    x0 = store.load_full_data()
    if x0 is not None and "prior" in manifest:
        problem.prior = RelativeDifferencePrior(**manifest["prior"])
        problem.x0 = torch.from_numpy(np.asarray(x0, dtype=np.float32))
        return
    problem.prepare(config)
    store.save_full_data(problem.x0.cpu().numpy())
    store.update_manifest(prior=_prior_to_dict(problem.prior))


def run_bootstrap(
    problem: BootstrapProblem,
    config: BootstrapConfig,
    folder: str | os.PathLike,
    executor: Executor | None = None,
    progress: bool = True,
    on_replicate: Callable[[ReplicateResult], None] | None = None,
    manifest_extra: dict | None = None,
) -> ReplicateStore:
    """Compute the replicates ``0 .. B-1`` missing from the store in ``folder``; returns the store.

    Re-running with the same inputs resumes; an interrupted run (including ``KeyboardInterrupt``)
    keeps every replicate completed so far. ``on_replicate`` is called after each one is saved.
    The folder is locked for the run (:class:`~petuq_sirf.bootstrap.store.StoreLock`: a second run on it
    is refused, naming the holder); replicate files altered or truncated on disk are named in a warning
    and recomputed.
    """
    with StoreLock(folder):
        return _run_locked(problem, config, folder, executor, progress, on_replicate, manifest_extra)


def _run_locked(problem, config, folder, executor, progress, on_replicate, manifest_extra) -> ReplicateStore:
    store = ReplicateStore.open(folder, config, problem.fingerprint(), tuple(problem.image.shape), manifest_extra)
    store.clean_temporaries()
    for index, reason in store.damaged():
        warnings.warn(f"{reason}: recomputing replicate {index}", stacklevel=3)
        store.discard(index)
    prepare_problem(problem, config, store)
    missing = store.missing(config.num_replicates)
    executor = executor or InProcessExecutor()
    done = config.num_replicates - len(missing)
    with tqdm(
        total=config.num_replicates, initial=done, desc="bootstrap replicates", unit="rep", disable=not progress or None
    ) as bar:
        for result in executor.map(problem, config, missing):
            store.save(result)
            bar.update(1)
            if on_replicate is not None:
                on_replicate(result)
    store.update_manifest(completed=len(store.completed()))
    return store
