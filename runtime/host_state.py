"""The host's CPU memory speed now, against its kernel tables: a drift check beside each validation point.

Why: on the GPU host the CPU's memory bandwidth swings about 2x, in runs of seconds to minutes
(runtime/validation/dram-drift/). In one slow episode (runtime/validation/wave2-s/run1, 2026-12-01T17:06Z-17:13Z)
every point ran 20-50% slower than the same plans 15 minutes later, and the model, calibrated in the usual state,
was off by as much. A summary that mixes such points with the rest cannot tell model error from host drift.

What: ``lia validate`` times one CPU GEMV of the profile's own tables before and after each point: the runtime's
linear (``calibrate.kernel_tables.cold_calls``) at one row over as many weight copies as the calibrator cycles for
that shape (together over 4x the LLC, ``calibrate.tensors.copies_to_stream``), a dozen calls (about 0.05 s), and
divides the median by the table's time. (Over 6 copies of OPT-30B out_proj, 2x the host's 300 MiB LLC, the first
run on the host read 0.71-0.96x the table, median 0.87: partly cached.) The
row gets ``host_cpu_time_vs_table_before`` / ``_after`` (1.0: as calibrated; 1.5: the host's CPU reads weights
1.5x slower than when its tables were measured) and ``host_drift_flag`` when either is more than
``DRIFT_FLAG`` off. The summary reports the metrics over the points without the flag beside those over all.
Only where the profile has CPU kernel tables and a CUDA device runs the points; ``LIA_HOST_PROBE=0`` turns it off.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from lia_model.hardware import KernelTables, table_seconds

DRIFT_FLAG = 0.15  # a probe more than 15% off its table flags the point (the max-error goal's size)
PROBE_CALLS = 12
PREFERRED = (("opt-30b", "out_proj"), ("opt-30b", "fc1"))  # small, steady shapes first


@dataclass(frozen=True)
class ProbeShape:
    model: str
    sublayer: str
    table_s: float  # the table's time at one row


def choose_shape(tables: Optional[KernelTables]) -> Optional[ProbeShape]:
    """The bf16 CPU linear the probe times: OPT-30B out_proj where the tables hold it, else the first catalog model's
    entry; None without CPU tables."""
    from lia_model.models import CATALOG

    if tables is None:
        return None
    entries = [t for t in tables.cpu_linear if t.weight_dtype == "bf16" and t.model in CATALOG]
    for model, sub in PREFERRED:
        for t in entries:
            if (t.model, t.sublayer) == (model, sub):
                return ProbeShape(t.model, t.sublayer, table_seconds(t, 1))
    return ProbeShape(entries[0].model, entries[0].sublayer, table_seconds(entries[0], 1)) if entries else None


def probe_wanted(is_cuda: bool) -> bool:
    return is_cuda and os.environ.get("LIA_HOST_PROBE", "1") != "0"


class HostProbe:
    """Times ``shape`` with the calibrator's cold calls (made once, on first use)."""

    def __init__(self, shape: ProbeShape, clock: Callable[[], float] = time.perf_counter) -> None:
        self.shape = shape
        self.clock = clock
        self._calls: Optional[list[Callable[[], object]]] = None

    def _make_calls(self) -> list[Callable[[], object]]:
        from calibrate.host import host_info
        from calibrate.kernel_tables import LLC_DEFAULT, cold_calls
        from calibrate.tensors import copies_to_stream
        from lia_model.accounting import linear_shape
        from lia_model.models import get_model
        from lia_model.sublayers import Sublayer

        model = get_model(self.shape.model)
        k, n = linear_shape(model, Sublayer(self.shape.sublayer))
        copies = copies_to_stream(2 * k * n, host_info().llc_bytes or LLC_DEFAULT, cap=16)  # as the tables did
        calls, _, _ = cold_calls(model, (self.shape.sublayer, 1, 0), copies=copies)
        return calls

    def time_vs_table(self) -> float:
        """The median time of ``PROBE_CALLS`` calls over the table's time (after one warm-up round)."""
        if self._calls is None:
            self._calls = self._make_calls()
            for call in self._calls:
                call()
        times = []
        for i in range(PROBE_CALLS):
            t0 = self.clock()
            self._calls[i % len(self._calls)]()
            times.append(self.clock() - t0)
        return statistics.median(times) / self.shape.table_s


def drift_columns(before: Optional[float], after: Optional[float]) -> dict[str, object]:
    """The row's host-state columns from the probe's ratios (None: not probed)."""
    known = [r for r in (before, after) if r is not None]
    return {
        "host_cpu_time_vs_table_before": None if before is None else round(before, 3),
        "host_cpu_time_vs_table_after": None if after is None else round(after, 3),
        "host_drift_flag": bool(known) and any(abs(r - 1.0) > DRIFT_FLAG for r in known),
    }


def wait_until_steady(
    probe: Callable[[], float],
    wait_s: float,
    every_s: float,
    in_a_row: int = 3,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> bool:
    """Probe every ``every_s`` until ``in_a_row`` consecutive probes are within ``DRIFT_FLAG`` of the table (True), or
    ``wait_s`` has passed (False). Each probe's ratio is reported with the seconds since the start."""
    start, row = clock(), 0
    while True:
        ratio = probe()
        row = row + 1 if abs(ratio - 1.0) <= DRIFT_FLAG else 0
        say(f"host probe at {clock() - start:5.0f} s: {ratio:.2f}x its table ({row} of {in_a_row} in a row within)")
        if row >= in_a_row:
            return True
        if clock() - start + every_s > wait_s:
            return False
        sleep(every_s)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m runtime.host_state --system PROFILE [--wait-s 180] [--every-s 10]``: wait for the host's CPU
    GEMV to be back at its table before a campaign (exit 0), or give up after --wait-s (exit 1)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("--system", required=True, help="a profile with CPU kernel tables")
    ap.add_argument("--wait-s", type=float, default=180.0, help="give up after this long (s)")
    ap.add_argument("--every-s", type=float, default=10.0, help="seconds between probes")
    args = ap.parse_args(argv)
    from lia_model.errors import LiaInputError
    from lia_model.profiles import load_system

    for name in ("wait_s", "every_s"):
        value = getattr(args, name)
        if not (value == value and 0 < value < float("inf")):
            print(f"error: --{name.replace('_', '-')}: {value} is not a number of seconds above 0", file=sys.stderr)
            return 2
    try:
        shape = choose_shape(load_system(args.system).kernels)
    except LiaInputError as err:
        print(f"error: --system: {err}", file=sys.stderr)
        return 2
    if shape is None:
        print(f"error: --system: {args.system} has no CPU kernel tables to probe against", file=sys.stderr)
        return 2
    from runtime import cpu_setup

    cpu_setup.apply()
    probe = HostProbe(shape)
    return 0 if wait_until_steady(probe.time_vs_table, args.wait_s, args.every_s) else 1


if __name__ == "__main__":
    raise SystemExit(main())
