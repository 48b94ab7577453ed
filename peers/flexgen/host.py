"""Real FlexGen 0.1.8 beside this project's runtime on the GPU host (driven by peers/flexgen/run_host.sh).

    python peers/flexgen/host.py plan    --profile P --out policies.json --points points.yaml
    python peers/flexgen/host.py flexgen --policies policies.json --site DIR --work DIR --out flexgen.json
                                         --log flexgen_runs.log --budget-s S
    python peers/flexgen/host.py report  --policies policies.json --flexgen flexgen.json
                                         --runtime results.csv --out peers.csv

``plan``: FlexGen's own policy for each workload (lia_model.flexgen: FlexGen's LP search on the host's
calibrated profile with the GPU capped), what FlexGen's cost model and ours predict for it, and a points file
for ``lia validate`` running, per workload, our optimum and the flexgen baseline plan (inline, so that the
runtime executes exactly the plan reported here). ``flexgen``: runs ``python -m flexgen.flex_opt`` (dummy
weights) once per workload with that policy, each in its own process, GPU capped by shim/sitecustomize.py,
the tokenizer stood in by shim/transformers. ``report``: one CSV row per workload with the measured tokens/s
of real FlexGen, our runtime on the flexgen plan and our runtime on our optimum, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODEL = "opt-30b"
FLEXGEN_MODEL = "facebook/opt-30b"
CAP_GIB = 40.0
# id, batch (None: FlexGen's own choice under the throughput objective), L_in, L_out
WORKLOADS = (
    ("b1-in32", 1, 32, 8),
    ("b1-in512", 1, 512, 8),
    ("tput-in32", None, 32, 8),
    ("b1-in1920", 1, 1920, 8),
)
MAX_THROUGHPUT_BATCH = 512  # caps FlexGen's batch search so that one run stays within the time budget


def runnable_percent(policy) -> list[int]:
    """FlexGen's --percent for its runtime: the LP's fractions as whole percents (GPU share rounded down), and
    the activations wholly on one device (its runtime raises NotImplementedError for a split)."""
    pct = list(policy.percent())
    act_gpu = 100 if policy.activations_gpu >= 0.5 else 0
    return pct[:4] + [act_gpu, 100 - act_gpu]


def cmd_plan(args) -> None:
    sys.path.insert(0, str(REPO))
    import yaml

    from lia_model.baselines import flexgen_baseline
    from lia_model.costmodel import predict
    from lia_model.models import get_model
    from lia_model.profiles import load_system
    from lia_model.workload import Workload

    system = load_system(args.profile, [f"gpu.memory_gib={args.cap_gib:g}"])
    model = get_model(MODEL)
    rows, groups = [], []
    for wid, batch, lin, lout in WORKLOADS:
        choose = batch is None  # FlexGen's own batch: its throughput search
        wl = Workload(batch=batch or 1, input_len=lin, output_len=lout)
        base = flexgen_baseline(system, model, wl, choose_batch=choose, max_batch=MAX_THROUGHPUT_BATCH)
        if base.flexgen is None:
            print(f"{wid}: FlexGen's LP finds no policy ({base.why_not}); skipped", flush=True)
            continue
        sol = base.flexgen.solution
        pol = sol.policy
        peer = base.predict(system, model)
        ours = predict(system, model, base.workload, base.plan)
        rows.append(
            {
                "workload": wid,
                "batch": base.workload.batch,
                "input_len": lin,
                "output_len": lout,
                "gpu_batch_size": pol.gpu_batch_size,
                "num_gpu_batches": pol.num_gpu_batches,
                "percent_lp": list(pol.percent()),
                "percent_run": runnable_percent(pol),
                "flexgen_own_predicted_throughput_tokens_per_s": sol.throughput_tokens_per_s,
                "lia_predicted_flexgen_throughput_tokens_per_s": peer.throughput_tokens_per_s,
                "lia_predicted_runtime_flexgen_plan_throughput_tokens_per_s": ours.throughput_tokens_per_s,
                "flexgen_plan": base.plan.model_dump(mode="json"),
            }
        )
        groups.append(
            {
                "id": wid,
                "model": MODEL,
                "batch": base.workload.batch,
                "input_len": lin,
                "output_len": lout,
                "gpu_memory_gib": args.cap_gib,
                "repeats": 1,
                "plans": ["optimal", {"label": "flexgen", "plan": base.plan.model_dump(mode="json")}],
            }
        )
        print(
            f"{wid}: B={base.workload.batch} L_in={lin} L_out={lout}: FlexGen gbs {pol.gpu_batch_size} x nb "
            f"{pol.num_gpu_batches}, --percent {' '.join(map(str, runnable_percent(pol)))}; predicted "
            f"{sol.throughput_tokens_per_s:.2f} tokens/s by FlexGen's cost model, {peer.throughput_tokens_per_s:.2f} "
            f"by ours (plan: {base.plan.gpu_resident_layers} resident layers)",
            flush=True,
        )
    Path(args.out).write_text(
        json.dumps({"profile": args.profile, "gpu_cap_gib": args.cap_gib, "model": MODEL, "workloads": rows}, indent=2)
    )
    Path(args.points).write_text(
        yaml.safe_dump(
            {
                "description": "real FlexGen beside this runtime: our optimum and the flexgen baseline plan",
                "groups": groups,
            },
            sort_keys=False,
        )
    )


_LOG_RE = {
    k: re.compile(rf"{k} latency: ([0-9.eE+-]+) s\s+{k} throughput: ([0-9.eE+-]+) token/s")
    for k in ("prefill", "decode", "total")
}


def parse_flexgen_log(text: str) -> dict:
    """The numbers of FlexGen's benchmark log (flexgen.utils.write_benchmark_log), last run in the file."""
    out = {}
    for key, rx in _LOG_RE.items():
        found = rx.findall(text)
        if found:
            out[f"{key}_latency_s"], out[f"{key}_throughput_tokens_per_s"] = (float(x) for x in found[-1])
    m = re.findall(r"peak gpu mem: ([0-9.]+) GB", text)
    if m:
        out["peak_gpu_gib"] = float(m[-1])
    return out


def cmd_flexgen(args) -> None:
    data = json.loads(Path(args.policies).read_text())
    work = Path(args.work)
    deadline = time.monotonic() + args.budget_s
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "shim"), args.site])
    env["FLEXGEN_GPU_CAP_GIB"] = f"{data['gpu_cap_gib']:g}"
    results = []
    with open(args.log, "w") as log:
        for w in data["workloads"]:
            left = deadline - time.monotonic()
            rec = {"workload": w["workload"], "status": "skipped", "reason": ""}
            if left < 30:
                rec["reason"] = f"time budget: {left:.0f} s left"
                results.append(rec)
                continue
            logfile = work / f"flexgen-{w['workload']}.log"
            cmd = [
                sys.executable,
                "-m",
                "flexgen.flex_opt",
                "--model",
                FLEXGEN_MODEL,
                "--path",
                "_DUMMY_",
                "--offload-dir",
                str(work / "offload"),
                "--prompt-len",
                str(w["input_len"]),
                "--gen-len",
                str(w["output_len"]),
                "--gpu-batch-size",
                str(w["gpu_batch_size"]),
                "--num-gpu-batches",
                str(w["num_gpu_batches"]),
                "--percent",
                *map(str, w["percent_run"]),
                "--log-file",
                str(logfile),
                "--verbose",
                "1",
            ]
            if w["percent_run"][3] > 0:
                # FlexGen computes attention on the CPU for the cache it keeps there (its LP's assumption); with
                # the flag and the whole cache on the GPU it would copy that cache to the CPU every step instead
                cmd.append("--cpu-cache-compute")
            log.write(f"== {w['workload']}: {' '.join(cmd)}\n")
            log.flush()
            t0 = time.monotonic()
            try:
                proc = subprocess.run(
                    cmd, env=env, cwd=str(work), capture_output=True, text=True, timeout=min(left, args.per_run_s)
                )
                text = proc.stdout + proc.stderr
                rec["returncode"] = proc.returncode
            except subprocess.TimeoutExpired as err:
                text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
                rec["reason"] = f"timed out after {time.monotonic() - t0:.0f} s"
                rec["returncode"] = None
            rec["wall_s"] = time.monotonic() - t0
            log.write(text[-6000:] + "\n")
            log.flush()
            numbers = parse_flexgen_log(logfile.read_text() if logfile.exists() else "")
            if "total_latency_s" in numbers:
                rec.update(numbers, status="ran")
            elif not rec["reason"]:
                tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
                rec["reason"] = f"exit {rec['returncode']}: {tail[0][:200]}"
            print(
                f"FlexGen {w['workload']}: {rec['status']} in {rec['wall_s']:.0f} s"
                + (
                    f", total {numbers['total_latency_s']:.2f} s, {numbers['total_throughput_tokens_per_s']:.2f} "
                    f"tokens/s"
                    if rec["status"] == "ran"
                    else f" ({rec['reason']})"
                ),
                flush=True,
            )
            results.append(rec)
    Path(args.out).write_text(json.dumps(results, indent=2))


def _measured(runtime_rows: list[dict], wid: str, label: str) -> tuple[float | None, str]:
    for r in runtime_rows:
        if r.get("point_id") == f"{wid}/{label}":
            if r.get("status") == "ran":
                v = float(r["measured_throughput_tokens_per_s"])
                return (v if math.isfinite(v) else None), ""
            return None, str(r.get("skip_reason") or r.get("status") or "")
    return None, "not run"


def cmd_report(args) -> None:
    import csv

    data = json.loads(Path(args.policies).read_text())
    flexgen = (
        {r["workload"]: r for r in json.loads(Path(args.flexgen).read_text())} if Path(args.flexgen).exists() else {}
    )
    runtime_rows: list[dict] = []
    if Path(args.runtime).exists():
        with open(args.runtime) as f:
            runtime_rows = list(csv.DictReader(f))
    out_rows = []
    for w in data["workloads"]:
        wid = w["workload"]
        fg = flexgen.get(wid, {})
        real = fg.get("total_throughput_tokens_per_s") if fg.get("status") == "ran" else None
        plan_tput, plan_why = _measured(runtime_rows, wid, "flexgen")
        opt_tput, opt_why = _measured(runtime_rows, wid, "optimal")
        opt_pred = next(
            (
                float(r["predicted_throughput_tokens_per_s"])
                for r in runtime_rows
                if r.get("point_id") == f"{wid}/optimal" and r.get("predicted_throughput_tokens_per_s")
            ),
            None,
        )
        out_rows.append(
            {
                "workload": wid,
                "model": MODEL,
                "gpu_cap_gib": data["gpu_cap_gib"],
                "batch": w["batch"],
                "input_len": w["input_len"],
                "output_len": w["output_len"],
                "flexgen_gpu_batch_size": w["gpu_batch_size"],
                "flexgen_num_gpu_batches": w["num_gpu_batches"],
                "flexgen_percent": " ".join(map(str, w["percent_run"])),
                "flexgen_real_tokens_per_s": real,
                "flexgen_real_prefill_s": fg.get("prefill_latency_s"),
                "flexgen_real_decode_s": fg.get("decode_latency_s"),
                "runtime_flexgen_plan_tokens_per_s": plan_tput,
                "runtime_optimum_tokens_per_s": opt_tput,
                "optimum_over_real_flexgen": (opt_tput / real) if opt_tput and real else None,
                "flexgen_own_predicted_tokens_per_s": w["flexgen_own_predicted_throughput_tokens_per_s"],
                "lia_predicted_flexgen_tokens_per_s": w["lia_predicted_flexgen_throughput_tokens_per_s"],
                "lia_predicted_runtime_flexgen_plan_tokens_per_s": w[
                    "lia_predicted_runtime_flexgen_plan_throughput_tokens_per_s"
                ],
                "lia_predicted_runtime_optimum_tokens_per_s": opt_pred,
                "flexgen_gpu_resident_layers_mapped": w["flexgen_plan"]["gpu_resident_layers"],
                "notes": "; ".join(
                    x
                    for x in (
                        f"FlexGen: {fg.get('reason')}" if fg.get("status") != "ran" and fg else "",
                        f"runtime flexgen plan: {plan_why}" if plan_why else "",
                        f"runtime optimum: {opt_why}" if opt_why else "",
                    )
                    if x
                ),
            }
        )
    cols = list(out_rows[0]) if out_rows else ["workload"]
    with open(args.out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=cols)
        wr.writeheader()
        for r in out_rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(
        f"\nOPT-30B, GPU capped at {data['gpu_cap_gib']:g} GiB: measured tokens/s (generated tokens / end-to-end time)"
    )
    print(
        f"{'workload':<11} {'B':>5} {'L_in/out':>9} {'FlexGen policy':<28} {'real FlexGen':>12} {'ours: its plan':>14} "
        f"{'ours: optimum':>13} {'optimum/FlexGen':>15}"
    )
    for r in out_rows:
        pol = f"{r['flexgen_gpu_batch_size']}x{r['flexgen_num_gpu_batches']} {r['flexgen_percent']}"
        ratio = "-" if r["optimum_over_real_flexgen"] is None else f"{r['optimum_over_real_flexgen']:.2f}x"
        print(
            f"{r['workload']:<11} {r['batch']:>5} {str(r['input_len']) + '/' + str(r['output_len']):>9} {pol:<28} "
            f"{fmt(r['flexgen_real_tokens_per_s']):>12} {fmt(r['runtime_flexgen_plan_tokens_per_s']):>14} "
            f"{fmt(r['runtime_optimum_tokens_per_s']):>13} {ratio:>15}"
        )
        if r["notes"]:
            print(f"{'':<11} note: {r['notes']}")
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--profile", required=True)
    p.add_argument("--cap-gib", type=float, default=CAP_GIB)
    p.add_argument("--out", required=True)
    p.add_argument("--points", required=True)
    f = sub.add_parser("flexgen")
    f.add_argument("--policies", required=True)
    f.add_argument("--site", required=True, help="folder with the installed flexgen, attrs and tqdm")
    f.add_argument("--work", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--log", required=True)
    f.add_argument("--budget-s", type=float, required=True)
    f.add_argument("--per-run-s", type=float, default=150.0)
    r = sub.add_parser("report")
    r.add_argument("--policies", required=True)
    r.add_argument("--flexgen", required=True)
    r.add_argument("--runtime", required=True)
    r.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    {"plan": cmd_plan, "flexgen": cmd_flexgen, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
