"""Page-locked host buffers that live for one hand-off, owned by the Mover and reused by key.

Device-to-host destinations, the contiguous K/V landing buffers and the CPU outputs that cross to the GPU are
taken from here (``take``) instead of torch's caching host allocator. A buffer is keyed by its role (what it is
for, e.g. "act_d2h"), its element type and its capacity: the element count rounded up to a power of two, the
rounding torch's caching host allocator applies, so a decode step's attention scores (one column wider each step)
reuse the buffer of the step before. A hand-out is a view of the buffer's first elements in the asked shape.

A buffer may be handed out again only once nothing uses it any more:

- on the host: no tensor refers to its memory (the storage's use count is back at the pool's own reference), so
  a value the executor still holds, or a view of it, keeps its buffer out of the pool;
- on a stream: every copy that read or wrote it has completed. Whoever issues such a copy reports it with
  ``used(tensor, event)`` (the event recorded after the copy on its stream).

A taken key reuses a free buffer whose events have completed; else, while fewer than ``ring`` free buffers of the
key are still in flight, it allocates another; else it waits on the host for the one used earliest. Buffers the
host holds do not count against the ring: the executor's data flow bounds how many it holds at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from lia_model.plan import Device
from runtime.backend import Backend

DEFAULT_RING = 2  # free buffers of one key that may be in flight before a hand-out waits


class CopyEvent(Protocol):
    """What the pool needs of an event (runtime.backend.Event, or a test's stand-in)."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class PoolKey:
    role: str  # what the buffers hold: "act_d2h", "kv_landing", "cpu_out"
    dtype: torch.dtype
    capacity: int  # elements


@dataclass(frozen=True)
class PinnedPoolStats:
    """The pool after a run: what it holds, and what the run asked of it."""

    buffers: int
    bytes_held: int
    bytes_by_role: tuple[tuple[str, int], ...]  # (role, bytes held), by role name
    handouts: int  # buffers handed out
    allocations: int  # hand-outs that allocated a new buffer
    reuses: int  # hand-outs of a buffer allocated before
    host_waits: int  # reuses that first waited on the host for a buffer's last copy


@dataclass
class _Buffer:
    base: torch.Tensor  # [capacity] elements, page-locked where CUDA is present
    baseline: int  # the storage's use count while only the pool refers to it
    pending: list = field(default_factory=list)  # events of copies not yet seen complete
    last_use: int = 0  # order of the latest ``used``; the earliest is waited for first

    def held(self) -> bool:
        return storage_use_count(self.base) > self.baseline

    def in_flight(self) -> bool:
        self.pending = [e for e in self.pending if not e.query()]
        return bool(self.pending)


class PinnedPool:
    def __init__(self, backend: Backend, ring: int = DEFAULT_RING) -> None:
        if ring < 1:
            raise ValueError(f"ring must be at least 1, got {ring}")
        self.backend = backend
        self.ring = ring
        self._buffers: dict[PoolKey, list[_Buffer]] = {}
        self._by_ptr: dict[int, _Buffer] = {}
        self._uses = 0
        self.reset_counts()

    def reset_counts(self) -> None:
        """Start counting hand-outs, allocations and waits anew (a new run); the buffers stay."""
        self.handouts = self.allocations = self.reuses = self.host_waits = 0

    def take(self, role: str, shape: tuple[int, ...], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """A host buffer of ``shape`` that nothing else uses (its contents are undefined)."""
        dtype = self.backend.dtype if dtype is None else dtype
        numel = 1
        for n in shape:
            numel *= n
        key = PoolKey(role, dtype, capacity(numel))
        kept = self._buffers.setdefault(key, [])
        free = [b for b in kept if not b.held()]
        idle = [b for b in free if not b.in_flight()]
        if idle:
            buf = idle[0]
            self.reuses += 1
        elif len(free) < self.ring:
            buf = self._allocate(key)
            kept.append(buf)
        else:
            buf = min(free, key=lambda b: b.last_use)
            for event in buf.pending:
                event.synchronize()
            buf.pending = []
            self.host_waits += 1
            self.reuses += 1
        self.handouts += 1
        return buf.base[:numel].view(shape)

    def used(self, tensor: torch.Tensor, event: CopyEvent) -> None:
        """A copy on a stream reads or writes ``tensor`` until ``event``; a tensor the pool did not hand out is
        ignored."""
        buf = self._by_ptr.get(tensor.untyped_storage().data_ptr())
        if buf is not None:
            self._uses += 1
            buf.pending.append(event)
            buf.last_use = self._uses

    def stats(self) -> PinnedPoolStats:
        by_role: dict[str, int] = {}
        buffers = 0
        for key, kept in self._buffers.items():
            buffers += len(kept)
            by_role[key.role] = by_role.get(key.role, 0) + sum(b.base.numel() * b.base.element_size() for b in kept)
        return PinnedPoolStats(
            buffers=buffers,
            bytes_held=sum(by_role.values()),
            bytes_by_role=tuple(sorted(by_role.items())),
            handouts=self.handouts,
            allocations=self.allocations,
            reuses=self.reuses,
            host_waits=self.host_waits,
        )

    def clear(self) -> None:
        """Drop every buffer (a tensor still holding one keeps its memory; torch frees it after its copies)."""
        self._buffers = {}
        self._by_ptr = {}

    def _allocate(self, key: PoolKey) -> _Buffer:
        base = self.backend.empty((key.capacity,), Device.CPU, pinned=True, dtype=key.dtype)
        buf = _Buffer(base, storage_use_count(base))
        self._by_ptr[base.untyped_storage().data_ptr()] = buf
        self.allocations += 1
        return buf


def capacity(numel: int) -> int:
    """Elements a buffer for ``numel`` holds: the next power of two (torch's caching host allocator rounds the
    same way)."""
    return 1 << max(numel - 1, 0).bit_length()


def storage_use_count(tensor: torch.Tensor) -> int:
    """References to ``tensor``'s memory: every tensor, view or storage object that refers to it counts one."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)
