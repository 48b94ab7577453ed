"""Running a study's points in parallel: local processes (default) or an existing Dask cluster.

Points are grouped in chunks so per-task overhead (pickling, scheduling) is small next to the work;
each chunk runs ``run_chunk`` in a worker and returns its rows in point order. The caller gets the
rows of all chunks in point order, whatever order the chunks finish in, so the executor never changes
the result (the CSV is sorted afterwards anyway).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Optional, Sequence

from lia_model.errors import LiaInputError
from studies.framework import Row

RunFn = Callable[[Any], list[Row]]
Progress = Callable[[int], None]  # called with the number of points just finished

EXECUTORS = ("local", "dask")
DASK_CONNECT_TIMEOUT_S = 20  # how long to wait for the scheduler before saying it is unreachable


def run_chunk(run: RunFn, points: Sequence[Any]) -> list[Row]:
    """Run the points of one chunk in order (executes in a worker process or a Dask worker)."""
    rows: list[Row] = []
    for point in points:
        rows.extend(run(point))
    return rows


def chunked(points: Sequence[Any], workers: int, chunks_per_worker: int = 4) -> list[list[Any]]:
    """Split into about ``workers * chunks_per_worker`` contiguous chunks (enough for load balance and progress)."""
    if not points:
        return []
    size = max(1, math.ceil(len(points) / (max(1, workers) * chunks_per_worker)))
    return [list(points[i : i + size]) for i in range(0, len(points), size)]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_points(
    run: RunFn,
    points: Sequence[Any],
    *,
    executor: str = "local",
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> list[Row]:
    """All rows of all points, in point order."""
    if executor not in EXECUTORS:
        raise LiaInputError("--executor", f"unknown executor '{executor}'", "use local or dask")
    if workers is not None and workers < 1:
        raise LiaInputError("--workers", f"must be at least 1, got {workers}", "e.g. --workers 2")
    if executor == "dask":
        if not scheduler:
            raise LiaInputError(
                "--scheduler",
                "the dask executor needs the address of a running scheduler",
                "e.g. --executor dask --scheduler tcp://10.0.0.5:8786",
            )
        return _run_dask(run, points, scheduler, workers, progress)
    if scheduler:
        raise LiaInputError(
            "--scheduler",
            "a scheduler address only applies to --executor dask",
            "add --executor dask, or drop --scheduler",
        )
    return _run_local(run, points, workers or default_workers(), progress)


def _run_local(run: RunFn, points: Sequence[Any], workers: int, progress: Optional[Progress]) -> list[Row]:
    chunks = chunked(points, workers)
    if workers == 1 or len(chunks) <= 1:
        rows: list[Row] = []
        for chunk in chunks:
            rows.extend(run_chunk(run, chunk))
            if progress:
                progress(len(chunk))
        return rows
    # fork: workers inherit the imported modules and profile caches, which start-up by spawn would redo.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    results: list[Optional[list[Row]]] = [None] * len(chunks)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=context, initializer=_ignore_interrupts
    )
    try:
        futures = {pool.submit(run_chunk, run, chunk): k for k, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            k = futures[future]
            results[k] = future.result()
            if progress:
                progress(len(chunks[k]))
    except BaseException:
        # Ctrl-C (or a failed chunk): stop now, not after every queued chunk has run. The workers are ended
        # first, so the pool's manager thread sees them gone and exits; waiting for it here keeps its wake-up
        # pipe from being written after it closed (an OSError traceback at exit, seen under CI's load).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [row for chunk_rows in results for row in (chunk_rows or [])]


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (no traceback from every worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_dask(
    run: RunFn, points: Sequence[Any], scheduler: str, workers: Optional[int], progress: Optional[Progress]
) -> list[Row]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_as_completed
    except ImportError:
        raise LiaInputError(
            "--executor dask",
            "dask.distributed is not installed",
            "pip install 'lia-modeler[dask]', or use --executor local",
        ) from None
    try:
        client = Client(scheduler, timeout=f"{DASK_CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise LiaInputError(
            "--scheduler",
            f"cannot connect to a Dask scheduler at '{scheduler}' ({err})",
            "start one with 'dask scheduler' and give its tcp://HOST:PORT address",
        ) from None
    try:
        if workers is None:
            workers = max(1, sum(client.nthreads().values()))
        chunks = chunked(points, workers)
        futures = client.map(run_chunk, [run] * len(chunks), chunks, pure=False)
        index = {f.key: k for k, f in enumerate(futures)}
        results: list[Optional[list[Row]]] = [None] * len(chunks)
        for future in dask_as_completed(futures, loop=client.loop):
            k = index[future.key]
            results[k] = future.result()
            if progress:
                progress(len(chunks[k]))
        return [row for chunk_rows in results for row in (chunk_rows or [])]
    finally:
        client.close()
