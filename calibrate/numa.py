"""Host buffers bound to one NUMA node, through libnuma loaded with ctypes (no numactl needed).

``numa_alloc_onnode`` binds the range with mbind, so the pages land on the node whichever thread touches
them first (a per-thread ``set_mempolicy`` would not survive torch's worker threads). After the buffer is
filled, ``numa_move_pages`` with no target nodes reports where a sample of its pages actually are, so the
binding is verified, not assumed. Without libnuma the buffers are plain allocations and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

_LIB: Optional[ctypes.CDLL] = None
_LIB_TRIED = False


def libnuma() -> Optional[ctypes.CDLL]:
    """The libnuma handle, or None when it is missing or the kernel has no NUMA support."""
    global _LIB, _LIB_TRIED
    if _LIB_TRIED:
        return _LIB
    _LIB_TRIED = True
    name = ctypes.util.find_library("numa")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    if lib.numa_available() < 0:
        return None
    lib.numa_alloc_onnode.restype = ctypes.c_void_p
    lib.numa_alloc_onnode.argtypes = [ctypes.c_size_t, ctypes.c_int]
    lib.numa_free.restype = None
    lib.numa_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.numa_move_pages.restype = ctypes.c_int
    lib.numa_move_pages.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    _LIB = lib
    return lib


def binding_status() -> str:
    return (
        "memory bound per node with libnuma (numa_alloc_onnode), placement checked with numa_move_pages"
        if libnuma() is not None
        else "libnuma not found (or the kernel has no NUMA support): buffers are not bound to a node"
    )


@dataclass
class NodeBuffer:
    """A host buffer and where its pages are."""

    tensor: "object"  # torch.Tensor of uint8 viewing the buffer
    node: int  # the node asked for (-1: not bound)
    placed_on: tuple[int, ...]  # nodes the sampled pages are on (empty when unknown)

    @property
    def verified(self) -> bool:
        return self.node >= 0 and self.placed_on == (self.node,)

    def placement_note(self) -> str:
        if self.node < 0:
            return "not bound (no libnuma)"
        if self.verified:
            return f"bound to node {self.node} (verified)"
        return f"asked for node {self.node}, pages found on nodes {list(self.placed_on) or 'unknown'}"


def _pages_nodes(lib: ctypes.CDLL, address: int, size: int, samples: int = 64) -> tuple[int, ...]:
    count = max(1, min(samples, size // 4096))
    step = max(4096, (size // count) // 4096 * 4096)
    pages = (ctypes.c_void_p * count)(*[address + i * step for i in range(count)])
    status = (ctypes.c_int * count)()
    if lib.numa_move_pages(0, count, pages, None, status, 0) != 0:
        return ()
    return tuple(sorted({s for s in status if s >= 0}))


@contextmanager
def node_buffer(size_bytes: int, node: Optional[int]) -> Iterator[NodeBuffer]:
    """A filled uint8 tensor of ``size_bytes`` on ``node`` (None or no libnuma: an ordinary allocation)."""
    import torch

    lib = libnuma()
    if node is None or lib is None:
        tensor = torch.empty(size_bytes, dtype=torch.uint8)
        tensor.fill_(1)
        yield NodeBuffer(tensor, -1, ())
        del tensor
        return
    address = lib.numa_alloc_onnode(size_bytes, node)
    if not address:
        raise MemoryError(f"numa_alloc_onnode({size_bytes}, {node}) failed")
    try:
        raw = (ctypes.c_char * size_bytes).from_address(address)
        tensor = torch.frombuffer(raw, dtype=torch.uint8)
        tensor.fill_(1)  # first touch: the pages are placed now, on the bound node
        buf = NodeBuffer(tensor, node, _pages_nodes(lib, address, size_bytes))
        yield buf
    finally:
        # the tensor views foreign memory: drop every reference before freeing it
        buf = None  # noqa: F841
        tensor = None  # noqa: F841
        raw = None  # noqa: F841
        lib.numa_free(address, size_bytes)
