"""PCIe copies between host and GPU, and their contention with CPU matrix work.

Copies: host-to-device (h2d) and device-to-host (d2h), from pinned (page-locked, DMA straight from the
buffer) and pageable memory (the driver stages through its own pinned buffer), sizes 1 MiB to 1 GiB, from
every NUMA node with memory when libnuma can bind the host buffer (pinned node buffers are page-locked
with ``cudaHostRegister``). Pinned copies are timed with CUDA events; pageable ones are synchronous and
timed with the wall clock. ``transfer_latency_us`` is the wall-clock time of one 4 KiB pinned h2d copy
including its synchronisation: what a runtime pays per copy beyond the bytes.

Contention: a stream of pinned h2d copies (256 MiB each) runs while the CPU runs a bf16 GEMM (OPT-30B fc1,
256 tokens: compute-bound) or GEMV (1 token: memory-bound) in a loop on every core. Each side's time is
compared with its time alone; slowdown = contended time / solo time (1.0 = no interference).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from calibrate.host import HostInfo
from calibrate.numa import libnuma, node_buffer
from calibrate.records import row, timed_row
from calibrate.shapes import headline_shape
from calibrate.tensors import copies_to_stream, cycling, fill_varied

MIB = 1 << 20
FULL_SIZES = tuple(MIB << k for k in range(11))  # 1 MiB .. 1 GiB
QUICK_SIZES = (MIB, 16 * MIB, 64 * MIB)
LATENCY_BYTES = 4096


@contextmanager
def host_buffer(size: int, node: Optional[int], pinned: bool) -> Iterator[tuple[Any, str]]:
    """A uint8 host tensor (on ``node`` when bound), page-locked when ``pinned``; and how it was made."""
    import torch

    if node is None:
        if pinned:
            tensor = torch.ones(size, dtype=torch.uint8).pin_memory()
            yield tensor, "torch pin_memory (cudaHostAlloc)"
        else:
            yield torch.ones(size, dtype=torch.uint8), "pageable (malloc)"
        return
    with node_buffer(size, node) as buf:
        how = buf.placement_note()
        if not pinned:
            yield buf.tensor, f"pageable, {how}"
            return
        cudart = torch.cuda.cudart()
        rc = cudart.cudaHostRegister(buf.tensor.data_ptr(), size, 0)
        if int(rc) != 0:
            raise RuntimeError(f"cudaHostRegister failed ({rc})")
        try:
            yield buf.tensor, f"pinned with cudaHostRegister, {how}"
        finally:
            torch.cuda.synchronize()
            cudart.cudaHostUnregister(buf.tensor.data_ptr())


def _copy_rows(node_label: int, node: Optional[int], sizes: tuple[int, ...], quick: bool) -> list[dict]:
    import torch

    from calibrate.timing import time_cuda, time_host

    biggest = max(sizes)
    dev = torch.empty(biggest, dtype=torch.uint8, device="cuda")
    rows = []
    for pinned in (True, False):
        try:
            ctx = host_buffer(biggest, node, pinned)
            host, how = ctx.__enter__()
        except (RuntimeError, MemoryError) as err:  # e.g. a locked-memory limit: fall back to torch's pinning
            ctx = host_buffer(biggest, None, pinned)
            host, how = ctx.__enter__()
            how += f" (node-bound buffer failed: {err})"
        try:
            for size in sizes:
                for direction in ("h2d", "d2h"):
                    src, dst = (host[:size], dev[:size]) if direction == "h2d" else (dev[:size], host[:size])
                    if pinned:
                        timing = time_cuda(lambda: dst.copy_(src, non_blocking=True), budget_s=0.05 if quick else 0.1)
                    else:

                        def sync_copy() -> None:
                            dst.copy_(src)
                            torch.cuda.synchronize()

                        timing = time_host(sync_copy, budget_s=0.05 if quick else 0.1)
                    rows.append(
                        timed_row(
                            "pcie",
                            direction,
                            timing,
                            label=f"{size // MIB} MiB",
                            pinned="pinned" if pinned else "pageable",
                            numa_node=node_label,
                            size_bytes=size,
                            bytes=float(size),
                            note=how,
                        )
                    )
            if pinned:
                small_src, small_dst = host[:LATENCY_BYTES], dev[:LATENCY_BYTES]

                def one_copy() -> None:
                    small_dst.copy_(small_src, non_blocking=True)
                    torch.cuda.synchronize()

                timing = time_host(one_copy, budget_s=0.05, min_sample_s=0.0)
                rows.append(
                    timed_row(
                        "pcie",
                        "h2d_latency",
                        timing,
                        label="4 KiB copy + sync",
                        pinned="pinned",
                        numa_node=node_label,
                        size_bytes=LATENCY_BYTES,
                        bytes=float(LATENCY_BYTES),
                        note=how,
                    )
                )
        finally:
            ctx.__exit__(None, None, None)
    del dev
    return rows


def measure(host: HostInfo, quick: bool) -> tuple[list[dict], list[str]]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    notes = []
    if libnuma() is not None:
        nodes: list[tuple[int, Optional[int]]] = [(n.node, n.node) for n in host.nodes if n.mem_total_bytes > 0]
    else:
        nodes = [(host.local_node, None)]
        notes.append("pcie: host buffers not bound to a node (no libnuma); measured from wherever the OS put them")
    rows = []
    for label, node in nodes:
        rows += _copy_rows(label, node, sizes, quick)
    return rows, notes


def _gemm(tokens: int, threads: int, cache_bytes: int) -> tuple[Any, dict]:
    import torch

    shape = headline_shape()
    torch.set_num_threads(threads)
    copies = copies_to_stream(2 * shape.k * shape.n, cache_bytes, cap=4)
    weights = [fill_varied(torch.empty(shape.n, shape.k, dtype=torch.bfloat16)) for _ in range(copies)]
    x = fill_varied(torch.empty(tokens, shape.k, dtype=torch.bfloat16))
    fn = cycling([(lambda w=w: torch.nn.functional.linear(x, w)) for w in weights])
    info = dict(
        label=f"{shape.label} bf16 default ISA, {tokens} tokens",
        dtype="bfloat16",
        tokens=tokens,
        k=shape.k,
        n=shape.n,
        threads=threads,
        flops=2.0 * tokens * shape.k * shape.n,
        bytes=2.0 * (shape.k * shape.n + tokens * (shape.k + shape.n)),
    )
    return fn, info


def contention(threads: int, cache_bytes: int, quick: bool) -> list[dict]:
    """Each of (GEMM, GEMV) against a stream of pinned h2d copies."""
    import torch

    from calibrate.timing import time_cuda, time_host

    chunk = (64 if quick else 256) * MIB
    host = torch.ones(chunk, dtype=torch.uint8).pin_memory()
    dev = torch.empty(chunk, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()

    def copy() -> Any:
        return dev.copy_(host, non_blocking=True)

    with torch.cuda.stream(stream):
        copy_solo = time_cuda(copy, budget_s=0.1 if quick else 0.3, stream=stream)
    rows = []
    for tokens in (256, 1):
        fn, info = _gemm(tokens, threads, cache_bytes)
        gemm_solo = time_host(fn, budget_s=0.2 if quick else 0.5)
        window_s = max(0.3 if quick else 1.0, 6 * gemm_solo.median_s)
        n_copies = max(3, math.ceil(window_s / copy_solo.median_s))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            start.record(stream)
            for _ in range(n_copies):
                copy()
            end.record(stream)
        calls, t0 = 0, time.perf_counter()
        while not end.query() or calls < 3:
            fn()
            calls += 1
        gemm_time = (time.perf_counter() - t0) / calls
        end.synchronize()
        copy_time = start.elapsed_time(end) * 1e-3 / n_copies
        what = "gemm" if tokens > 1 else "gemv"
        rows.append(
            row(
                "contention",
                f"{what}_during_h2d",
                time_s=gemm_time,
                solo_time_s=gemm_solo.median_s,
                slowdown=gemm_time / gemm_solo.median_s,
                samples=calls,
                backend=f"torch {torch.__version__}",
                note=f"CPU {what} loop while {n_copies} pinned h2d copies of {chunk // MIB} MiB ran",
                **info,
            )
        )
        rows.append(
            row(
                "contention",
                f"h2d_during_{what}",
                time_s=copy_time,
                solo_time_s=copy_solo.median_s,
                slowdown=copy_time / copy_solo.median_s,
                samples=n_copies,
                pinned="pinned",
                size_bytes=chunk,
                bytes=float(chunk),
                label=f"pinned h2d {chunk // MIB} MiB",
                note=f"copies while the CPU ran {info['label']}",
            )
        )
        del fn
    return rows
