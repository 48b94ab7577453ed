"""A run's timeline: Chrome-trace JSON (chrome://tracing, Perfetto) and the overlap efficiency.

Lanes: CPU sublayers (perf_counter after their inputs were ready), GPU sublayers (CUDA events on the
compute stream), weight prefetch copies, other host-to-device copies (activations, KV fetches) and
device-to-host copies (activations, KV write-back). GPU and copy events are placed on the host clock
through the run's base event, recorded on the compute stream right after a synchronisation at the run's
start (``RunResult.base``).

GPU sublayers and copies carry ``issue_lag_us``: how long after the launching thread queued the op's start
event the stream reached it (near 0: the stream was idle, waiting for the host to issue the work).

Overlap efficiency of a run: (sum of the lanes' busy times - wall time) / (sum - the largest busy time):
1 when everything but the busiest lane hides behind it, 0 when the lanes ran one after another.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

from lia_model.plan import Device
from runtime.records import OpRecord, RunResult

LANES = ("CPU sublayers", "GPU sublayers", "H2D weights", "H2D act/KV", "D2H act/KV")


def lane(r: OpRecord) -> str:
    if r.kind == "compute":
        return LANES[0] if r.device == Device.CPU else LANES[1]
    if r.name == "weights":
        return LANES[2]
    return LANES[3] if r.device == Device.GPU else LANES[4]


def _start_s(r: OpRecord, run: RunResult) -> Optional[float]:
    """Seconds from the run's start: host events by perf_counter, CUDA events through the base event."""
    if run.base is None or r.start is None:
        return None
    base_event, base_host = run.base
    if r.start.host_stamp is not None:
        return r.start.host_stamp - base_host
    return r.start.seconds_since(base_event)


def busy_s(run: RunResult) -> dict[str, float]:
    """Busy seconds per lane (sum of the lane's op durations)."""
    out: dict[str, float] = defaultdict(float)
    for r in run.records:
        if r.seconds == r.seconds and r.seconds > 0:
            out[lane(r)] += r.seconds
    return dict(out)


def overlap_efficiency(run: RunResult, wall_s: float) -> Optional[float]:
    busy = list(busy_s(run).values())
    total, top = sum(busy), max(busy, default=0.0)
    if total - top <= 0:
        return None
    return (total - wall_s) / (total - top)


def chrome_trace(run: RunResult, title: str = "") -> dict:
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": title or "lia run"}}]
    for tid, name in enumerate(LANES):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": name}})
    for r in run.records:
        start = _start_s(r, run)
        if start is None or r.seconds != r.seconds:
            continue
        label = r.name if r.kind == "compute" else f"{r.name} {r.detail}".strip()
        args = {
            "stage": r.stage.value,
            "step": r.step,
            "layer": r.layer,
            "chunk": r.chunk,
            "layer_kind": r.layer_kind,
            "bytes": r.nbytes,
            "tokens": r.tokens,
        }
        issued = getattr(r.start, "issued_at", None)
        if issued is not None and run.base is not None:
            args["issue_lag_us"] = round((start - (issued - run.base[1])) * 1e6, 1)
        events.append(
            {
                "name": f"{label} L{r.layer}" if r.layer >= 0 else label,
                "ph": "X",
                "pid": 0,
                "tid": LANES.index(lane(r)),
                "ts": round(start * 1e6, 3),
                "dur": round(r.seconds * 1e6, 3),
                "args": args,
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(run: RunResult, path: Path, title: str = "") -> Path:
    path.write_text(json.dumps(chrome_trace(run, title)))
    return path
