"""Where a decode layer's time went, from the runtime's Chrome traces (``lia validate --trace DIR``).

    python tools/trace_layers.py TRACE.json [TRACE.json ...]      # or a folder, or a traces.tgz of them

For each streamed layer of each decode step (steps after the first two: warm), per trace:

- period: from the layer's GPU qkv start to the next layer's (the layer's share of the step);
- stream: the layer's weight copies (sum of their durations on the H2D weights track);
- chain: from the layer's first sublayer start to its fc2's end (the layer's dependent work);
- cpu, gpu: the sum of its CPU and GPU sublayer durations; gaps = chain - cpu - gpu (copies, waits, launches
  between sublayers, where the devices take turns);
- handoff: from the layer's fc2 end to the next layer's qkv start (the launching thread's work between layers
  where the next qkv waits for it);
- qkv lag (traces from 2026-12-01's thirteenth session on): how long after the launching thread queued the GPU
  qkv the stream reached it (near 0: the GPU waited for the host; '-' when the trace lacks it or qkv is on the CPU).

It prints the medians per trace, so a reader can see whether a layer was bound by the weight stream or by its
chain, and what the chain was made of. Reads the JSON the runtime writes (runtime/trace.py); no GPU needed.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tarfile
from pathlib import Path

SKIP_STEPS = 2


def load_traces(paths: list[str]) -> dict[str, list[dict]]:
    """name -> the trace's complete events ('X'), from JSON files, folders of them, or .tgz archives."""
    out: dict[str, list[dict]] = {}

    def add(name: str, text: str) -> None:
        data = json.loads(text)
        events = data.get("traceEvents") if isinstance(data, dict) else data
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError(f"{name}: not a Chrome trace (a list of event objects, or one under 'traceEvents')")
        out[name] = [e for e in events if e.get("ph") == "X" and isinstance(e.get("args"), dict)]

    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.trace.json")):
                add(f.stem, f.read_text())
        elif p.name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".trace.json"):
                        add(Path(m.name).stem, io.TextIOWrapper(tar.extractfile(m)).read())
        elif p.is_file():
            add(p.stem, p.read_text())
        else:
            raise FileNotFoundError(p)
    return out


def layer_rows(events: list[dict]) -> list[dict]:
    """One row per streamed layer of each warm decode step (see the module docstring)."""
    tracks = {"cpu": 0, "gpu": 1, "weights": 2}
    decode = [e for e in events if e["args"].get("stage") == "decode"]
    steps = sorted({e["args"]["step"] for e in decode})[SKIP_STEPS:]
    rows = []
    for step in steps:
        ev = [e for e in decode if e["args"]["step"] == step]
        layers = sorted({e["args"]["layer"] for e in ev if e["args"]["layer"] >= 0})
        starts = {}
        for li in layers:
            qkv = [e for e in ev if e["args"]["layer"] == li and e["name"].startswith("qkv")]
            if qkv:
                starts[li] = min(e["ts"] for e in qkv)
        for li in layers:
            mine = [e for e in ev if e["args"]["layer"] == li]
            if not mine or mine[0]["args"].get("layer_kind") != "streamed" or li + 1 not in starts or li not in starts:
                continue
            subl = [e for e in mine if e["tid"] in (tracks["cpu"], tracks["gpu"])]
            fc2 = [e for e in subl if e["name"].startswith("fc2")]
            if not fc2:
                continue
            chain = max(e["ts"] + e["dur"] for e in fc2) - min(e["ts"] for e in subl)
            fc2_end = max(e["ts"] + e["dur"] for e in fc2)
            gpu_qkv = [e for e in subl if e["tid"] == tracks["gpu"] and e["name"].startswith("qkv")]
            lags = [e["args"]["issue_lag_us"] for e in gpu_qkv if "issue_lag_us" in e["args"]]
            cpu = sum(e["dur"] for e in subl if e["tid"] == tracks["cpu"])
            gpu = sum(e["dur"] for e in subl if e["tid"] == tracks["gpu"])
            rows.append(
                {
                    "step": step,
                    "layer": li,
                    "period_ms": (starts[li + 1] - starts[li]) / 1e3,
                    "stream_ms": sum(e["dur"] for e in mine if e["tid"] == tracks["weights"]) / 1e3,
                    "chain_ms": chain / 1e3,
                    "cpu_ms": cpu / 1e3,
                    "gpu_ms": gpu / 1e3,
                    "gaps_ms": (chain - cpu - gpu) / 1e3,
                    "handoff_ms": (starts[li + 1] - fc2_end) / 1e3,
                    "qkv_lag_ms": min(lags) / 1e3 if lags else float("nan"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("error: give trace JSON files, folders of them, or a traces.tgz", file=sys.stderr)
        return 2
    try:
        traces = load_traces(args)
        per_trace = {name: layer_rows(events) for name, events in traces.items()}
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(
            f"error: could not read the traces: {exc} -- give the JSON files lia validate --trace wrote",
            file=sys.stderr,
        )
        return 2
    except (KeyError, TypeError) as exc:
        print(
            f"error: a trace event lacks a field the runtime writes ({exc}) -- give traces of lia validate --trace",
            file=sys.stderr,
        )
        return 2
    cols = ("period_ms", "stream_ms", "chain_ms", "cpu_ms", "gpu_ms", "gaps_ms", "handoff_ms", "qkv_lag_ms")
    print(f"{'trace (streamed decode layers, medians)':58s} {'n':>3s} " + " ".join(f"{c[:-3]:>7s}" for c in cols))
    for name, rows in per_trace.items():
        if not rows:
            print(f"{name:58s}   0 (no streamed decode layer)")
            continue
        med = {}
        for c in cols:
            known = [r[c] for r in rows if r[c] == r[c]]
            med[c] = statistics.median(known) if known else float("nan")
        print(
            f"{name:58s} {len(rows):3d} "
            + " ".join(f"{med[c]:7.2f}" if med[c] == med[c] else f"{'-':>7s}" for c in cols)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
