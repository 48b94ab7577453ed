"""The runtime's weight feeder as the cost model sees it: its queue on the copy engine, and what a critical copy
pays behind it.

The runtime (runtime/streamer.py, which takes these two numbers from here) streams a layer's weights as pieces
of ``PIECE_BYTES``, at most ``PIECES_IN_FLIGHT`` queued on the host-to-device copy engine, and holds its next
piece while a critical-path copy (a moved activation, a cached-K/V fetch) is in flight
(``WeightFeeder.yield_to``). The copy engine runs copies in the order they were queued, whatever their stream:
measured with ``python -m runtime.probe_h2d`` (runtime/validation/probe-h2d/), a 64 KiB copy issued on a second
stream beside a 2 GiB weight job took 35 ms, the job's remaining time; queued behind the feeder's pieces it took
0.93 ms.

A critical copy that finds the copy engine streaming weights therefore waits for the piece being copied (on
average half of it: the copy arrives at a uniformly random point of it) and for the pieces queued behind it:

    wait = (PIECES_IN_FLIGHT - 1/2) * PIECE_BYTES / h2d_rate

(2 pieces of 32 MiB at emr-h200-kernels' 53.39 GB/s: 0.94 ms; the probe's small copies on the feeder's stream
took 0.93-0.98 ms, their own 0.05 ms included). Copies queued right behind another critical copy do not wait
again: the feeder is still holding its next piece.
"""

from __future__ import annotations

PIECE_BYTES = 32 * 2**20  # one weight piece on the copy engine
PIECES_IN_FLIGHT = 2  # pieces the feeder keeps queued


def critical_copy_wait_s(h2d_bytes_per_s: float) -> float:
    """Mean wait of a critical host-to-device copy behind the feeder's queued pieces (formula above)."""
    if not h2d_bytes_per_s > 0:
        raise ValueError(f"h2d_bytes_per_s must be positive, got {h2d_bytes_per_s!r}")
    return (PIECES_IN_FLIGHT - 0.5) * PIECE_BYTES / h2d_bytes_per_s


__all__ = ["PIECE_BYTES", "PIECES_IN_FLIGHT", "critical_copy_wait_s"]
