"""The Mover's pinned pool (runtime/pinned_pool.py): a buffer goes out again only when neither the host nor a copy
still uses it, a key's ring waits only when exhausted, and the counts add up. The events of finished copies are the
fake backend's (always complete); a copy still in flight is ``InFlight`` until the test finishes it."""

from __future__ import annotations

import pytest
import torch

from runtime.backend import Backend
from runtime.measure import pinned_pool_columns
from runtime.pinned_pool import PinnedPool, PinnedPoolStats, capacity

BF16 = torch.bfloat16


class InFlight:
    """A copy's end event that has not happened; ``synchronize`` (a host wait) lets it happen."""

    def __init__(self) -> None:
        self.done = False
        self.host_waits = 0

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.host_waits += 1
        self.done = True


@pytest.fixture
def backend() -> Backend:
    return Backend("fake")


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_capacity_rounds_up_to_a_power_of_two():
    assert [capacity(n) for n in (0, 1, 2, 3, 30, 32, 33, 1000)] == [1, 1, 2, 4, 32, 32, 64, 1024]


def test_a_buffer_is_reused_once_its_copy_has_completed(backend):
    pool = PinnedPool(backend)
    a = pool.take("act_d2h", (4, 8))
    assert a.shape == (4, 8) and a.dtype == backend.dtype
    first = _ptr(a)
    pool.used(a, backend.event(backend.d2h))  # the fake backend's events are complete
    del a
    b = pool.take("act_d2h", (4, 8))
    assert _ptr(b) == first
    s = pool.stats()
    assert (s.handouts, s.allocations, s.reuses, s.host_waits, s.buffers) == (2, 1, 1, 0, 1)


def test_a_second_buffer_is_handed_out_while_the_firsts_copy_is_in_flight(backend):
    pool = PinnedPool(backend, ring=2)
    a = pool.take("act_d2h", (4, 8))
    first = _ptr(a)
    copy = InFlight()
    pool.used(a, copy)
    del a
    b = pool.take("act_d2h", (4, 8))
    assert _ptr(b) != first
    assert copy.host_waits == 0
    copy.done = True  # the copy ends: the first buffer is idle again
    del b
    c = pool.take("act_d2h", (4, 8))
    assert _ptr(c) == first
    s = pool.stats()
    assert (s.handouts, s.allocations, s.reuses, s.host_waits, s.buffers) == (3, 2, 1, 0, 2)


def test_an_exhausted_ring_waits_for_the_buffer_used_earliest(backend):
    pool = PinnedPool(backend, ring=2)
    copies, ptrs = [InFlight(), InFlight()], []
    for copy in copies:
        t = pool.take("kv_landing", (2, 3, 5))
        ptrs.append(_ptr(t))
        pool.used(t, copy)
        del t
    c = pool.take("kv_landing", (2, 3, 5))
    assert _ptr(c) == ptrs[0]
    assert [copy.host_waits for copy in copies] == [1, 0]
    s = pool.stats()
    assert (s.handouts, s.allocations, s.reuses, s.host_waits, s.buffers) == (3, 2, 1, 1, 2)


def test_a_ring_of_one_waits_instead_of_allocating(backend):
    pool = PinnedPool(backend, ring=1)
    a = pool.take("act_d2h", (8,))
    first, copy = _ptr(a), InFlight()
    pool.used(a, copy)
    del a
    assert _ptr(pool.take("act_d2h", (8,))) == first
    assert copy.host_waits == 1 and pool.stats().buffers == 1


def test_a_buffer_the_host_still_holds_is_never_handed_out(backend):
    """Its copy has ended, but a view of it (the head's last position, a CPU sublayer's input) is alive."""
    pool = PinnedPool(backend, ring=1)
    a = pool.take("act_d2h", (4, 8))
    first = _ptr(a)
    pool.used(a, backend.event(backend.d2h))
    last = a[:, -1]
    del a
    b = pool.take("act_d2h", (4, 8))  # the held buffer does not count against the ring: a new one, no wait
    assert _ptr(b) != first
    del b, last
    assert _ptr(pool.take("act_d2h", (4, 8))) == first
    s = pool.stats()
    assert (s.handouts, s.allocations, s.reuses, s.host_waits, s.buffers) == (3, 2, 1, 0, 2)


def test_a_copy_of_a_view_guards_the_whole_buffer(backend):
    pool = PinnedPool(backend, ring=1)
    a = pool.take("cpu_out", (4, 1, 8))
    first, copy = _ptr(a), InFlight()
    pool.used(a[:, -1], copy)  # the head's H2D copy of the last position
    del a
    assert _ptr(pool.take("cpu_out", (4, 1, 8))) == first
    assert copy.host_waits == 1


def test_role_dtype_and_size_class_are_separate_keys_and_one_class_shares(backend):
    pool = PinnedPool(backend)
    held = [
        pool.take("act_d2h", (4, 8)),  # 32 bf16
        pool.take("act_d2h", (4, 8), torch.float32),  # 32 float32
        pool.take("kv_landing", (4, 8), BF16),  # other role
        pool.take("act_d2h", (4, 9)),  # 36 -> 64 elements
    ]
    assert len({_ptr(t) for t in held}) == 4
    del held
    a, b = pool.take("act_d2h", (2, 15)), pool.take("act_d2h", (33,))  # 30 -> 32 and 33 -> 64: both reused
    assert (a.shape, b.shape) == ((2, 15), (33,))
    s = pool.stats()
    assert (s.handouts, s.allocations, s.reuses, s.buffers) == (6, 4, 2, 4)


def test_statistics_by_hand(backend):
    pool = PinnedPool(backend)
    held = [pool.take("act_d2h", (4, 8)), pool.take("act_d2h", (4, 8), torch.float32)]
    held.append(pool.take("kv_landing", (2, 3, 5)))  # 30 -> 32 bf16 elements
    assert pool.stats() == PinnedPoolStats(
        buffers=3,
        bytes_held=32 * 2 + 32 * 4 + 32 * 2,
        bytes_by_role=(("act_d2h", 32 * 2 + 32 * 4), ("kv_landing", 32 * 2)),
        handouts=3,
        allocations=3,
        reuses=0,
        host_waits=0,
    )
    del held
    pool.reset_counts()  # a new run: the buffers stay, the counts start again
    pool.take("act_d2h", (32,))
    s = pool.stats()
    assert (s.buffers, s.bytes_held, s.handouts, s.allocations, s.reuses) == (3, 256, 1, 0, 1)
    assert pinned_pool_columns(s) == {
        "measured_pinned_pool_bytes_held": 256,
        "measured_pinned_pool_buffers": 3,
        "measured_pinned_pool_handouts": 1,
        "measured_pinned_pool_allocations": 0,
        "measured_pinned_pool_reuses": 1,
        "measured_pinned_pool_host_waits": 0,
    }
    assert set(pinned_pool_columns(None).values()) == {None}
    pool.clear()
    assert pool.stats().buffers == 0


def test_a_copy_of_a_tensor_the_pool_did_not_hand_out_guards_no_buffer(backend):
    pool = PinnedPool(backend, ring=1)
    first = _ptr(pool.take("act_d2h", (8,)))
    copy = InFlight()
    pool.used(torch.zeros(8), copy)
    assert _ptr(pool.take("act_d2h", (8,))) == first
    assert copy.host_waits == 0 and pool.stats().buffers == 1
