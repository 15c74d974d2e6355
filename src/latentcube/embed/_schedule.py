"""Dask scheduling of the block tasks: a LocalCluster we own, or the caller's scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from latentcube.embed._compute import _InMemory, _run_block
from latentcube.embed._plan import _device, _Plan, default_workers


def _client(scheduler: Any, n_workers: int, threads: int, processes: bool):
    """(client, cluster-or-None): a LocalCluster we own, or a client of the given scheduler."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler, None, False
    if scheduler is None:
        import dask

        # Distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in worker processes to hand freed memory
        # back to the OS. An explicit trim threshold also freezes glibc's mmap threshold at 128 KiB, so
        # every encoder intermediate is a fresh mmap with page faults on first touch: about half the speed
        # (benchmarks/RESULTS.md). The worker's memory is bounded by the block anyway;
        # keep the nanny's thread-count variables and leave the trim threshold to the worker's
        # reuse_large_blocks(). MALLOC_ARENA_MAX=1: blocks run on a worker *thread*, whose own glibc arena
        # cannot keep tensors over 64 MB and trims the rest away; with one arena they come from the heap
        # that reuse_large_blocks() keeps: faster and smaller (benchmarks/RESULTS.md). Each worker runs one
        # task thread, so a single arena costs no lock contention.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        environ["MALLOC_ARENA_MAX"] = 1
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=processes,
                                   dashboard_address=None)
        return Client(cluster), cluster, True
    return Client(scheduler), None, True



def _default_worker_count(plan: _Plan, cpu: int, n_blocks: int, per_worker: int) -> int:
    """Workers of the default LocalCluster: 1 with a GPU, else :func:`default_workers` for this machine."""
    import psutil  # a dependency of distributed

    if _device(plan).startswith("cuda"):
        return 1
    return default_workers(cpu, n_blocks, per_worker, psutil.virtual_memory().available)


def _run_distributed(plan: _Plan, source: str | _InMemory, todo: list, scheduler: Any, n_workers: int | None,
                     processes: bool, cpu: int, done: Callable[[int, int], None], threads: int | None) -> None:
    import dask
    from dask.base import tokenize
    from distributed import as_completed

    own_cluster = scheduler is None
    if own_cluster:
        n_workers = n_workers or 1
        # One torch thread pool per worker, together filling the cores without oversubscription.
        plan = replace(plan, torch_threads=threads or max(1, cpu // n_workers))
    elif threads:
        plan = replace(plan, torch_threads=threads)
    client, cluster, close = _client(scheduler, n_workers or 1, 1, processes)
    try:
        src = dask.delayed(source, name=f"embed-source-{tokenize(plan.out)}") if isinstance(source, _InMemory) else source
        tasks = [dask.delayed(_run_block, pure=False)(plan, src, iy, ix, ys, xs, dask_key_name=f"embed-block-{iy}-{ix}-{tokenize(plan.out)}")
                 for iy, ix, ys, xs in todo]
        futures = client.compute(tasks)
        try:
            for fut in as_completed(futures):
                iy, ix = fut.result()
                done(iy, ix)
        except BaseException:
            # Stop queued blocks; running ones finish their region and marker or leave no marker.
            client.cancel(futures)
            raise
    finally:
        if close:
            client.close()
        if cluster is not None:
            cluster.close()
