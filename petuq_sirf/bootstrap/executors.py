"""Where replicates run: in this process, a local process pool, or a Dask distributed cluster.

Every executor takes the problem, the configuration and a list of replicate indices and yields
``ReplicateResult`` objects as they complete (in any order). A replicate depends only on
``(problem, config, index)``, so the results are the same whatever the executor and order. A
replicate whose task raises is retried ``retries`` times before the error propagates.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Iterator
from typing import Protocol

import torch

from petuq_sirf.bootstrap.replicate import BootstrapConfig, BootstrapProblem, ReplicateResult, run_replicate

SCHEDULERS = ("none", "processes", "local-dask")


class Executor(Protocol):
    def map(self, problem: BootstrapProblem, config: BootstrapConfig, indices: list[int]) -> Iterator[ReplicateResult]:
        """Yield the replicates of ``indices`` as they complete."""

    def close(self) -> None: ...


class InProcessExecutor:
    """Replicates one after the other in this process (the default)."""

    def __init__(self, retries: int = 1) -> None:
        self.retries = retries

    def map(self, problem, config, indices):
        for b in indices:
            for attempt in range(self.retries + 1):
                try:
                    result = run_replicate(problem, config, b)
                    break
                except (FloatingPointError, RuntimeError):
                    if attempt == self.retries:
                        raise
            yield result

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- process pool
_WORKER_STATE: dict = {}


def _init_worker(problem: BootstrapProblem, config: BootstrapConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_STATE["problem"] = problem
    _WORKER_STATE["config"] = config


def _pool_task(index: int) -> ReplicateResult:
    return run_replicate(_WORKER_STATE["problem"], _WORKER_STATE["config"], index)


class ProcessPoolExecutor:
    """A pool of ``num_workers`` local processes (``spawn``: safe with torch's threads).

    The problem is sent once per worker (initializer), not once per replicate.
    """

    def __init__(self, num_workers: int = 2, threads_per_worker: int = 1, retries: int = 1) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.threads_per_worker = threads_per_worker
        self.retries = retries

    def map(self, problem, config, indices):
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            self.num_workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(problem, config, self.threads_per_worker),
        ) as pool:
            attempts = dict.fromkeys(indices, 0)
            pending = {pool.submit(_pool_task, b): b for b in indices}
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    b = pending.pop(fut)
                    try:
                        result = fut.result()
                    except cf.process.BrokenProcessPool:
                        raise
                    except Exception:
                        attempts[b] += 1
                        if attempts[b] > self.retries:
                            raise
                        pending[pool.submit(_pool_task, b)] = b
                        continue
                    yield result

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- Dask
def _dask_task(problem_and_config: tuple[BootstrapProblem, BootstrapConfig], index: int) -> ReplicateResult:
    problem, config = problem_and_config
    return run_replicate(problem, config, index)


class DaskExecutor:
    """Replicates as tasks of a Dask distributed cluster.

    Args:
        address: a scheduler address (``tcp://host:port``) of an existing cluster (e.g. started by
            dask-jobqueue on SLURM), or ``None`` to start a ``LocalCluster``.
        num_workers: workers of the local cluster.
        threads_per_worker: threads per local worker (torch also uses this many).
        processes: local workers as processes (True) or threads of this process (False).
        retries: Dask retries of a failed task (a lost worker's tasks are rescheduled by Dask).
        client: an existing ``dask.distributed.Client`` to use instead.

    The problem is scattered once to every worker (``broadcast=True``); each task carries only its
    replicate index.
    """

    def __init__(
        self,
        address: str | None = None,
        num_workers: int = 2,
        threads_per_worker: int = 1,
        processes: bool = True,
        retries: int = 2,
        client=None,
    ) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # an optional extra
            raise ImportError(
                "the Dask schedulers need dask[distributed]: pip install 'petuq_sirf[distributed]' "
                "(or use --scheduler none|processes)"
            ) from exc
        self.retries = retries
        self._own_client = client is None
        self._cluster = None
        if client is not None:
            self.client = client
        elif address:
            try:
                self.client = Client(address, timeout="20s")
            except OSError as exc:
                raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        else:
            self._cluster = LocalCluster(
                n_workers=num_workers,
                threads_per_worker=threads_per_worker,
                processes=processes,
                dashboard_address=None,
                silence_logs=40,
            )
            self.client = Client(self._cluster)

    @property
    def num_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def map(self, problem, config, indices):
        from dask.distributed import as_completed

        if not indices:
            return
        shared = self.client.scatter((problem, config), broadcast=True, hash=False)
        token = problem.fingerprint()[:12]
        futures = [
            self.client.submit(
                _dask_task,
                shared,
                b,
                key=f"petuq-bootstrap-{token}-{config.seed}-{b}",
                retries=self.retries,
                pure=False,
            )
            for b in indices
        ]
        try:
            for fut in as_completed(futures):
                yield fut.result()
                fut.release()
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self._own_client:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_executor(scheduler: str, num_workers: int = 2, threads_per_worker: int = 1) -> Executor:
    """``none`` -> in-process, ``processes`` -> local pool, ``local-dask`` -> Dask LocalCluster,
    ``tcp://HOST:PORT`` (or ``tls://``) -> an existing Dask scheduler."""
    if scheduler in ("none", "", None):
        return InProcessExecutor()
    if scheduler == "processes":
        return ProcessPoolExecutor(num_workers, threads_per_worker)
    if scheduler == "local-dask":
        return DaskExecutor(None, num_workers, threads_per_worker)
    if "://" in scheduler:
        return DaskExecutor(scheduler)
    raise ValueError(f"unknown scheduler {scheduler!r}: use none, processes, local-dask or tcp://HOST:PORT")
