"""Host memory per NUMA node: read and copy bandwidth, a load-latency chase, and CPU decode attention
reading its KV cache from the node.

- read: ``sum`` over a buffer on the node (all threads); GB/s of bytes read.
- copy: one half of the buffer into the other; GB/s of bytes copied (each byte is read once and written once).
- chase: a dependent chain of loads over a random cyclic permutation of cache-line slots, walked from
  Python; the time per step includes the interpreter's own cost, which is the same on every node, so the
  difference between nodes is the extra load latency (written into a CXL tier's description; the cost model
  reads bandwidths only).
- attention: decode score and context (q = 1) of OPT-30B's heads with K and V on the node; GB/s of KV read.
Nodes with memory and no CPUs are CXL expanders; the threads run on the process's CPUs either way.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from calibrate.host import HostInfo
from calibrate.numa import binding_status, libnuma, node_buffer
from calibrate.records import row, timed_row
from calibrate.shapes import AttentionPoint
from calibrate.tensors import fill_varied
from lia_model.models import CATALOG

LINE_BYTES = 64


def _chase_s_per_step(buffer: Any, region_bytes: int, steps: int, seed: int = 0) -> float:
    """Seconds per dependent load over a random cycle of cache lines in the first ``region_bytes``."""
    arr = buffer.numpy()[:region_bytes].view(np.int64)
    stride = LINE_BYTES // 8
    slots = region_bytes // LINE_BYTES
    order = np.random.default_rng(seed).permutation(slots)
    nxt = np.empty(slots, dtype=np.int64)
    nxt[order[:-1]] = order[1:] * stride
    nxt[order[-1]] = order[0] * stride
    arr[::stride][:slots] = nxt
    mv = memoryview(arr)
    i = int(order[0] * stride)
    for _ in range(1000):  # warm the interpreter path
        i = mv[i]
    t0 = time.perf_counter()
    for _ in range(steps):
        i = mv[i]
    return (time.perf_counter() - t0) / steps


def _attention_rows(
    node_label: int, nodes_arg: Optional[int], point: AttentionPoint, threads: int, placement: str
) -> list[dict]:
    import torch

    from calibrate.timing import time_host

    bh = point.batch * point.heads
    kv_elems = bh * point.s * point.head_dim
    kv_bytes = kv_elems * 2
    rows = []
    with node_buffer(2 * kv_bytes, nodes_arg) as buf:
        kv = buf.tensor.view(torch.bfloat16)
        fill_varied(kv)
        k = kv[:kv_elems].view(bh, point.s, point.head_dim)
        v = kv[kv_elems:].view(bh, point.s, point.head_dim)
        q = torch.empty(bh, point.q, point.head_dim, dtype=torch.bfloat16).uniform_(-1, 1)

        def attend() -> Any:
            scores = torch.bmm(q, k.transpose(1, 2))
            return torch.bmm(torch.softmax(scores, dim=-1), v)

        timing = time_host(attend, budget_s=0.1)
        rows.append(
            timed_row(
                "host_memory",
                "attention_decode",
                timing,
                label=point.label,
                dtype="bfloat16",
                batch=point.batch,
                heads=point.heads,
                q=point.q,
                s=point.s,
                head_dim=point.head_dim,
                tokens=point.batch * point.q,
                numa_node=node_label,
                threads=threads,
                flops=2 * point.flops,
                bytes=float(2 * kv_bytes),
                note=placement,
            )
        )
    return rows  # k and v view the freed node buffer from here on: nothing may use them


def measure_node(
    node: int, bound: bool, size_bytes: int, threads: int, quick: bool, attention: AttentionPoint
) -> list[dict]:
    import torch

    from calibrate.timing import time_host

    torch.set_num_threads(threads)
    rows = []
    with node_buffer(size_bytes, node if bound else None) as buf:
        placement = buf.placement_note()
        data = buf.tensor
        as_f32 = data.view(torch.float32)
        timing = time_host(lambda: as_f32.sum(), budget_s=0.1 if quick else 0.3)
        rows.append(
            timed_row(
                "host_memory",
                "read",
                timing,
                label=f"sum over {size_bytes >> 20} MiB",
                dtype="float32",
                numa_node=node,
                size_bytes=size_bytes,
                threads=threads,
                bytes=float(size_bytes),
                note=placement,
            )
        )
        half = size_bytes // 2
        src, dst = data[:half], data[half : 2 * half]
        timing = time_host(lambda: dst.copy_(src), budget_s=0.1 if quick else 0.3)
        rows.append(
            timed_row(
                "host_memory",
                "copy",
                timing,
                label=f"copy {half >> 20} MiB",
                dtype="uint8",
                numa_node=node,
                size_bytes=half,
                threads=threads,
                bytes=float(half),
                note=placement,
            )
        )
        steps = 50_000 if quick else 200_000
        per_step = _chase_s_per_step(data, min(size_bytes, 1 << 30), steps)
        rows.append(
            row(
                "host_memory",
                "chase",
                label="dependent loads, random cache lines",
                numa_node=node,
                size_bytes=min(size_bytes, 1 << 30),
                time_s=per_step,
                samples=steps,
                note=placement + "; includes the Python interpreter's per-step cost (same on every node)",
            )
        )
    rows += _attention_rows(node, node if bound else None, attention, threads, placement)
    return rows


def measure(host: HostInfo, threads: int, quick: bool) -> tuple[list[dict], list[str]]:
    """Every node with memory; returns rows and notes (binding, single node, CXL)."""
    size = (128 << 20) if quick else (1 << 30)
    model = CATALOG["opt-30b"]
    point = (
        AttentionPoint(4, model.num_heads, 1, 512, model.head_dim)
        if quick
        else AttentionPoint(16, model.num_heads, 1, 2048, model.head_dim)
    )
    bound = libnuma() is not None
    notes = [f"host memory: {binding_status()}"]
    nodes = [n for n in host.nodes if n.mem_total_bytes > 0] if bound else []
    if not nodes:
        nodes_to_run = [host.local_node]
        if not bound:
            notes.append(
                f"host memory: measured unbound (the OS places pages, normally on node {host.local_node}); "
                f"{len(host.nodes)} NUMA node(s) listed"
            )
    else:
        nodes_to_run = [n.node for n in nodes]
    if not host.cxl_nodes:
        notes.append(
            f"host memory: {len(host.cpu_nodes)} NUMA node(s) with CPUs and no CPU-less (CXL) node: no cxl tier"
        )
    rows = []
    for node in nodes_to_run:
        rows += measure_node(node, bound, size, threads, quick, point)
    return rows, notes
