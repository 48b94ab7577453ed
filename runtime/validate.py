"""``lia validate``: run validation points for real and compare them with the cost model.

Order of work: every point is resolved and predicted first (pure, fast), points that cannot or should not
run are listed as skipped with the reason (plan infeasible in memory, predicted too long for
``--max-point-s``, no GPU, ...), then one weight arena and one KV arena are created for all of them and the
points run grouped by model, so the random weights are made and page-locked once per process.
A time budget (``--time-budget-s``) stops starting points whose estimated run time would pass it; the
estimate is the predicted time of warm-up plus repeats times the largest measured/predicted ratio seen so far.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from lia_model.baselines import baseline_plans
from lia_model.costmodel import Prediction, predict
from lia_model.costterms import CostMode
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryTier, available_bytes
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, CpuIsa, Device, HostTier, Plan, policy_notation
from lia_model.sublayers import SUBLAYERS, Stage
from lia_model.workload import Workload
from runtime.points import (
    GroupSpec,
    IsaChoice,
    entry_name,
    group_model,
    group_workload,
    plan_entries,
    resolve_entry,
    runnable_system,
)
from runtime.preflight import capped_system, preflight
from runtime.report import sublayer_column
from runtime.weights import check_runnable


@dataclass
class Options:
    repeats: int = 5
    profiled_runs: int = 3
    trace_dir: Optional[str] = None  # write one Chrome trace per point here (runtime/trace.py)
    gpu_memory_gib: Optional[float] = None
    max_point_s: Optional[float] = None
    time_budget_s: Optional[float] = None
    seed: int = 0
    host_weights_gib: Optional[float] = None
    check_device: str = "auto"


@dataclass
class Point:
    id: str
    group: GroupSpec
    model: ModelSpec
    full_layers: int
    workload: Workload
    cap: Optional[float]
    plan_spec: str
    repeats: int
    plan: Optional[Plan] = None  # as executed (CPU ISA set to the one this process uses)
    plan_isa: str = ""
    pred: Optional[Prediction] = None
    pred_additive: Optional[Prediction] = None
    skip_reason: Optional[str] = None
    duplicate_of: Optional[str] = None
    est_s: float = 0.0

    @property
    def system_key(self) -> tuple[str, int, str]:
        return self.model.name, self.model.num_layers, self.workload.precision.weight_dtype.value


def resolve_points(
    groups: list[GroupSpec], system: SystemSpec, opts: Options, isa: IsaChoice, has_gpu: bool
) -> list[Point]:
    """Plans, predictions and skip decisions for every (group, plan) pair; allocates nothing."""
    points: list[Point] = []
    for g in groups:
        try:
            model, full = group_model(g)
            workload = group_workload(g, model)
            try:
                check_runnable(workload.precision)  # the cost model prices int4; the runtime does not run it
            except LiaInputError as err:
                raise LiaInputError(f"group {g.id}: weight_dtype", err.problem, err.fix) from None
        except LiaInputError as err:
            points.append(
                Point(
                    f"{g.id}/-",
                    g,
                    _placeholder_model(),
                    0,
                    Workload(batch=1, input_len=1, output_len=1),
                    None,
                    "-",
                    0,
                    skip_reason=str(err),
                )
            )
            continue
        cap = g.gpu_memory_gib if g.gpu_memory_gib is not None else opts.gpu_memory_gib
        sysc = runnable_system(capped_system(system, cap), isa)
        baselines = baseline_plans(sysc, model, workload)
        seen: dict[str, str] = {}
        for i, entry in enumerate(plan_entries(g, list(baselines))):
            name = entry_name(entry, i)
            p = Point(
                f"{g.id}/{name}",
                g,
                model,
                full,
                workload,
                cap,
                entry if isinstance(entry, str) else name,
                g.repeats or opts.repeats,
            )
            points.append(p)
            try:
                plan = resolve_entry(entry, sysc, model, workload, baselines)
            except LiaInputError as err:
                p.skip_reason = f"no plan: {err}"
                continue
            p.plan_isa = plan.isa_label
            if isa.run is not None and isa.run in sysc.cpu.isa and sysc.cpu.isa[isa.run].present:
                plan = plan.model_copy(update={"cpu_isa": isa.run})
            p.plan = plan
            try:
                p.pred = predict(sysc, model, workload, plan, CostMode.OVERLAP)
                p.pred_additive = predict(sysc, model, workload, plan, CostMode.ADDITIVE)
            except LiaInputError as err:
                p.skip_reason = f"cannot predict: {err}"
                continue
            try:
                preflight(system, model, workload, plan, has_gpu=has_gpu, gpu_memory_gib=cap)
            except LiaInputError as err:
                p.skip_reason = str(err)
                continue
            key = _execution_key(plan, model)
            if key in seen:
                p.duplicate_of = seen[key]
                continue
            seen[key] = p.id
            warm = p.pred.ttft_s + (p.pred.tpot_s[0] if p.pred.tpot_s else 0.0)
            p.est_s = warm + (p.repeats + opts.profiled_runs) * p.pred.latency_s  # timed + profiled runs
            if opts.max_point_s is not None and p.est_s > opts.max_point_s:
                p.skip_reason = (
                    f"predicted {p.pred.latency_s:.1f} s per run, {p.est_s:.0f} s with warm-up and "
                    f"{p.repeats} repeats: over --max-point-s {opts.max_point_s:g}"
                )
    return points


def _execution_key(plan: Plan, model: ModelSpec) -> str:
    """Plans that execute identically share one measurement: the label never matters, and with every layer
    resident neither do the policies, tiers or the CPU ISA."""
    update: dict[str, Any] = {"label": ""}
    if plan.gpu_resident_layers == model.num_layers:
        update.update(
            prefill_policy=ALL_GPU,
            decode_policy=ALL_GPU,
            weight_tier=HostTier.DDR,
            kv_tier=HostTier.DDR,
            cpu_isa=CpuIsa.AMX_BF16,
            pinned_weights=True,
            overlap=True,
        )
    return plan.model_copy(update=update).model_dump_json()


def _placeholder_model() -> ModelSpec:
    return ModelSpec(
        name="-",
        num_layers=1,
        hidden_size=1,
        ffn_size=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=1,
        vocab_size=1,
        max_context=2,
    )


# ====================================================================== running


def run_points(
    points: list[Point],
    system: SystemSpec,
    opts: Options,
    echo: Callable[[str], None],
    fake_gpu: bool = False,
    on_progress: Optional[Callable[[list[dict[str, Any]]], None]] = None,
) -> list[dict[str, Any]]:
    """Run every runnable point; return one CSV row per point (skipped points included).

    ``on_progress`` receives the rows so far after every point (the CLI rewrites results.csv with them, so
    a run stopped by a time limit still leaves its measurements). The time budget counts from this call,
    weight creation included.
    """
    import torch

    started = time.perf_counter()

    from runtime import cpu_setup
    from runtime.backend import Backend
    from runtime.executor import GpuLayerCache, kv_arena_elements
    from runtime.hostmem import HostArena
    from runtime.kernels import gqa_decode_variant
    from runtime.kvstore import writeback_mode
    from runtime.streamer import feeder_mode
    from runtime.weight_stream import handoff_mode
    from runtime.weights import layer_layout

    backend = Backend.detect(fake_gpu=fake_gpu)
    setup = cpu_setup.apply()
    runnable = [p for p in points if p.skip_reason is None and p.duplicate_of is None]
    rows: dict[str, dict[str, Any]] = {}
    context = _context(system, backend)
    context["cpu_setup"] = setup.describe()
    context["omp_binding"] = cpu_setup.binding_in_effect()  # the setup's bind= is what was asked for
    context["gqa_decode"] = gqa_decode_variant()
    tables = system.kernels
    if tables is not None and tables.setup and tables.setup.split()[0] != setup.describe().split()[0]:
        echo(
            f"note: the profile's kernel tables were measured with {tables.setup.split()[0]}, this run uses "
            f"{setup.describe().split()[0]}: its CPU predictions are off by the difference; measure the tables "
            "again on this host (python -m calibrate.kernel_tables) or set LIA_THREADS"
        )
    context["weight_feeder"] = f"{feeder_mode(backend)}; {handoff_mode()}"
    context["kv_writeback"] = writeback_mode() if backend.is_cuda else ""
    context["cpu_worker"] = cpu_setup.worker_mode()  # LIA_CPU_WORKER: CPU sublayers inline or on the worker thread
    context["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") if backend.is_cuda else ""
    if runnable:
        w_elems = max(p.model.num_layers * layer_layout(p.model, _wdt(p)).numel for p in runnable)
        kv_elems = max(kv_arena_elements(p.model, p.workload, p.plan) for p in runnable)
        host_avail = available_bytes(system)[MemoryTier.DDR] / 2
        if opts.host_weights_gib is not None:
            w_elems = min(w_elems, int(opts.host_weights_gib * 2**30 / 2))
        if w_elems + kv_elems > host_avail:
            largest_layer = max(layer_layout(p.model, _wdt(p)).numel for p in runnable)
            w_elems = max(largest_layer, int(host_avail - kv_elems))
            echo(
                f"note: weights + KV exceed the profile's host memory; the weight arena is cut to "
                f"{w_elems * 2 / 1e9:.1f} GB and later layers reuse earlier layers' host weights"
            )
        t0 = time.perf_counter()
        widest = max(runnable, key=lambda p: layer_layout(p.model, _wdt(p)).numel).model
        arena = HostArena(backend, w_elems, pinned=True, random_fill=True, seed=opts.seed, fan_in=widest.hidden_size)
        kv_arena = HostArena(backend, kv_elems, pinned=True, random_fill=False) if kv_elems else None
        st = arena.stats
        echo(
            f"setup: weight arena {st.bytes / 1e9:.1f} GB (touch {st.touch_s:.1f} s, pin {st.pin_s:.1f} s, "
            f"fill {st.fill_s:.1f} s, pinned={st.pinned}{'; ' + '; '.join(st.notes) if st.notes else ''}); "
            f"KV arena {kv_elems * 2 / 1e9:.1f} GB (pinned={kv_arena.pinned if kv_arena else '-'}); "
            f"total {time.perf_counter() - t0:.1f} s on {backend.description}"
        )
        if backend.is_cuda:
            m2d = backend.memcpy2d
            echo(
                "pitched KV copies: "
                + ("cudaMemcpy2DAsync" if m2d.available else f"PyTorch fallback (slower; {m2d.reason})")
            )
            context["pitched_copies"] = "cudaMemcpy2DAsync" if m2d.available else f"fallback: {m2d.reason}"
        context["setup_s"] = round(time.perf_counter() - t0, 2)
    order = sorted(runnable, key=lambda p: p.system_key)
    from runtime.host_state import HostProbe, choose_shape, drift_columns, probe_wanted

    shape = choose_shape(tables) if probe_wanted(backend.is_cuda) else None
    host_probe = HostProbe(shape) if shape is not None else None
    if host_probe is not None:
        echo(f"host drift probe: {shape.model} {shape.sublayer} at 1 row before and after each point")
    weights_by_model: dict[tuple[str, int], Any] = {}
    layer_cache = GpuLayerCache()
    ratio = 1.5
    for k, p in enumerate(order, 1):
        elapsed = time.perf_counter() - started
        est = p.est_s * ratio
        if opts.time_budget_s is not None and elapsed + est > opts.time_budget_s:
            p.skip_reason = f"time budget: estimated {est:.0f} s with {elapsed:.0f} of {opts.time_budget_s:.0f} s used"
            echo(f"[{k}/{len(order)}] {p.id}: skipped ({p.skip_reason})")
            continue
        gc.collect()  # anything a failed point left in a reference cycle goes before this point allocates
        if p.system_key not in weights_by_model:
            weights_by_model.clear()
            layer_cache.clear()
            weights = None  # the previous model's GPU embeddings and head go before the next model's are made
            gc.collect()
            if backend.is_cuda:
                torch.cuda.empty_cache()
            from runtime.weights import ModelWeights

            weights_by_model[p.system_key] = ModelWeights(p.model, arena, backend, seed=opts.seed, weight_dtype=_wdt(p))
        weights = weights_by_model[p.system_key]
        t_point = time.perf_counter()
        drift_before = host_probe.time_vs_table() if host_probe is not None else None
        try:
            measured, check, peaks = _run_one(p, system, backend, weights, kv_arena, layer_cache, opts)
        except LiaInputError as err:
            p.skip_reason = str(err)
            echo(f"[{k}/{len(order)}] {p.id}: skipped ({p.skip_reason})")
            continue
        except torch.cuda.OutOfMemoryError as err:  # the cap is tighter than the memory model thinks
            layer_cache.clear()
            p.skip_reason = f"FAILED: CUDA out of memory under the {p.cap} GiB cap: {str(err).splitlines()[0]}"
            echo(f"[{k}/{len(order)}] {p.id}: {p.skip_reason}")
            continue
        except Exception as err:  # noqa: BLE001 - one broken point must not lose the campaign's other points
            import traceback

            echo(traceback.format_exc())
            p.skip_reason = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            echo(f"[{k}/{len(order)}] {p.id}: {p.skip_reason}")
            layer_cache.clear()
            if backend.is_cuda:
                try:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except RuntimeError:
                    pass
            continue
        drift_after = host_probe.time_vs_table() if host_probe is not None else None
        rows[p.id] = {**_row(p, system, measured, check, context, weights), **peaks}
        rows[p.id].update(drift_columns(drift_before, drift_after) if host_probe is not None else {})
        rows[p.id]["point_wall_s"] = round(time.perf_counter() - t_point, 2)
        if p.pred.latency_s > 0:
            ratio = min(5.0, max(ratio if k > 1 else 1.0, measured.latency_s / p.pred.latency_s))
        echo(
            f"[{k}/{len(order)}] {p.id}: predicted / measured (error): latency {p.pred.latency_s:.3f} / "
            f"{measured.latency_s:.3f} s ({_err(p.pred.latency_s, measured.latency_s)}), TTFT {p.pred.ttft_s:.3f} / "
            f"{measured.ttft_s:.3f} s ({_err(p.pred.ttft_s, measured.ttft_s)}), TPOT {_f(p.pred.tpot_mean_s)} / "
            f"{_f(measured.tpot_mean_s)} s ({_err(p.pred.tpot_mean_s, measured.tpot_mean_s)})"
            + (f"; logits rel err {check['logits_rel_err']:.2e}" if "logits_rel_err" in check else "")
            + (f"; DATA-FLOW MISMATCH: {check['dataflow_first_problem']}" if check["dataflow_problems"] else "")
            + (
                f"; host CPU {drift_before:.2f}x / {drift_after:.2f}x its table"
                + (" (HOST DRIFT)" if rows[p.id]["host_drift_flag"] else "")
                if host_probe is not None
                else ""
            )
            + f" [{time.perf_counter() - started:.0f} s]"
        )
        if on_progress is not None:
            on_progress(_collect(points, rows, context, final=False))
    return _collect(points, rows, context, final=True)


def _collect(
    points: list[Point], rows: dict[str, dict[str, Any]], context: dict[str, Any], final: bool
) -> list[dict[str, Any]]:
    out = []
    for p in points:
        if p.id in rows:
            out.append(rows[p.id])
        elif p.duplicate_of is not None and p.duplicate_of in rows:
            row = dict(rows[p.duplicate_of])
            row.update(_ids(p))
            row["reused_from"] = p.duplicate_of
            out.append(row)
        else:
            reason = p.skip_reason or (
                f"same plan as {p.duplicate_of}, which did not run"
                if p.duplicate_of
                else "not run"
                if final
                else "not run yet"
            )
            out.append(
                {**_ids(p), **_plan_cols(p), **_pred_cols(p), "status": "skipped", "skip_reason": reason, **context}
            )
    return out


def _err(pred: Optional[float], meas: Optional[float]) -> str:
    if pred is None or meas is None or meas <= 0:
        return "-"
    return f"{100 * (pred - meas) / meas:+.1f}%"


def _f(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _run_one(p: Point, system: SystemSpec, backend, weights, kv_arena, layer_cache, opts: Options):
    import torch

    from runtime.executor import Executor, random_prompt
    from runtime.measure import summarize_runs
    from runtime.preflight import apply_gpu_cap
    from runtime.reference import check_against_reference

    layer_cache.trim(p.plan.gpu_resident_layers)  # free what this point does not use before capping
    apply_gpu_cap(p.cap)
    if backend.is_cuda:  # the point's GPU peak: everything allocated while its runs go (weights cached before too)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    preflight(system, p.model, p.workload, p.plan, has_gpu=backend.has_gpu, gpu_memory_gib=p.cap)
    unpin = not p.plan.pinned_weights and weights.arena.pinned
    if unpin:
        weights.arena.set_pinned(False)
    try:
        with Executor(backend, weights, p.plan, p.workload, kv_arena, layer_cache) as ex:
            prompt = random_prompt(p.model, p.workload, opts.seed)
            ex.generate(prompt, output_len=min(2, p.workload.output_len), profile=False)
            # Headline times come from unprofiled runs only; one more run records the per-sublayer events
            # (their synchronisation would otherwise inflate the measured TTFT and TPOT).
            runs = [ex.generate(prompt, profile=False) for _ in range(p.repeats)]
            profiled_runs = [
                ex.generate(prompt, profile=True, keep_logits=p.group.check and i == 0)
                for i in range(max(1, opts.profiled_runs))
            ]
            profiled = profiled_runs[0]
    finally:
        if unpin:
            weights.arena.set_pinned(True)
    peaks: dict[str, Any] = {"measured_gpu_peak_allocated_bytes": None, "measured_gpu_peak_reserved_bytes": None}
    if backend.is_cuda:
        peaks = {
            "measured_gpu_peak_allocated_bytes": float(torch.cuda.max_memory_allocated()),
            "measured_gpu_peak_reserved_bytes": float(torch.cuda.max_memory_reserved()),
        }
    check = None
    if p.group.check:
        if backend.is_cuda:
            apply_gpu_cap(None)
        device = torch.device("cuda") if backend.is_cuda and opts.check_device != "cpu" else torch.device("cpu")
        check = check_against_reference(weights, prompt, profiled.tokens, profiled.logits, device)
    from runtime.dataflow import check_run

    problems = check_run(profiled, p.plan, p.model, p.workload, Device.GPU if backend.has_gpu else Device.CPU)
    check = {
        **(check or {}),
        "dataflow_problems": len(problems),
        "dataflow_first_problem": problems[0] if problems else "",
    }
    sysc = capped_system(system, p.cap)
    measured = summarize_runs(runs, profiled_runs, sysc, p.model, p.workload, p.plan)
    if opts.trace_dir:
        from pathlib import Path

        from runtime.trace import write_trace

        Path(opts.trace_dir).mkdir(parents=True, exist_ok=True)
        import re

        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", p.id)
        write_trace(profiled_runs[-1], Path(opts.trace_dir) / f"{safe}.trace.json", p.id)
    return measured, check, peaks


# ====================================================================== rows


def _context(system: SystemSpec, backend) -> dict[str, Any]:
    import torch

    return {
        "system": system.name,
        "device": backend.description,
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "run_at_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _ids(p: Point) -> dict[str, Any]:
    return {
        "point_id": p.id,
        "group_id": p.group.id,
        "model": p.model.name,
        "num_layers": p.model.num_layers,
        "model_layers_full": p.full_layers,
        "batch": p.workload.batch,
        "input_len": p.workload.input_len,
        "output_len": p.workload.output_len,
        "gpu_memory_gib": p.cap,
        "plan_spec": p.plan_spec,
        "weight_dtype": _wdt(p).value,
    }


def _wdt(p: Point) -> "Any":
    """The point's stored weight dtype (lia_model.precision.WeightDtype)."""
    return p.workload.precision.weight_dtype


def _plan_cols(p: Point) -> dict[str, Any]:
    if p.plan is None:
        return {}
    pl = p.plan
    return {
        "plan_label": pl.label or p.plan_spec,
        "plan_prefill": policy_notation(pl.prefill_policy),
        "plan_decode": policy_notation(pl.decode_policy),
        "gpu_resident_layers": pl.gpu_resident_layers,
        "prefill_minibatches": pl.prefill_minibatches,
        "weight_tier": pl.weight_tier.value,
        "kv_tier": pl.kv_home,
        "pinned_weights": pl.pinned_weights,
        "overlap": pl.overlap,
        "cpu_isa_plan": p.plan_isa,
        "cpu_isa_run": pl.isa_label,
        "plan_json": json.dumps(pl.model_dump(mode="json"), separators=(",", ":")),
    }


def _pred_cols(p: Point) -> dict[str, Any]:
    if p.pred is None:
        return {}
    b = p.pred.bound_resource
    return {
        "predicted_ttft_s": p.pred.ttft_s,
        "predicted_tpot_mean_s": p.pred.tpot_mean_s,
        "predicted_latency_s": p.pred.latency_s,
        "predicted_throughput_tokens_per_s": p.pred.throughput_tokens_per_s,
        "predicted_latency_additive_s": p.pred_additive.latency_s if p.pred_additive else None,
        "predicted_bound_prefill": b.get(Stage.PREFILL, ""),
        "predicted_bound_decode": b.get(Stage.DECODE, ""),
        "predicted_feasible": p.pred.feasible,
        # the memory model's GPU requirement and what it allows under the point's cap (lia_model.memory)
        "predicted_hbm_bytes": p.pred.memory[MemoryTier.HBM].required_bytes,
        "predicted_hbm_available_bytes": p.pred.memory[MemoryTier.HBM].available_bytes,
        **_slowdown_cols(p.pred),
    }


def _slowdown_cols(pred) -> dict[str, Any]:
    """The model's expected slowdown of CPU sublayers beside the weight DMA, per stage (StageReport.cpu_slowdown):
    the report's in-situ CPU kernel check compares measured times with the calibrated ones times this."""
    out: dict[str, Any] = {}
    for st, rep in pred.stages.items():
        out[f"predicted_cpu_slowdown_{st.value}"] = rep.cpu_slowdown
        # which sublayers that slowdown applies to, in policy notation (1 = slowed beside the DMA)
        out[f"predicted_cpu_slowed_{st.value}"] = "(" + ",".join(str(int(b)) for b in rep.cpu_slowed) + ")"
    return out


def _row(p: Point, system: SystemSpec, m, check: dict, context: dict, weights) -> dict[str, Any]:
    from runtime.measure import pinned_pool_columns, predicted_sublayer_ms
    from runtime.reference import LOGITS_RTOL

    row: dict[str, Any] = {**_ids(p), **_plan_cols(p), **_pred_cols(p), "status": "ran", "skip_reason": ""}
    row.update(
        {
            "measured_ttft_s": m.ttft_s,
            "measured_tpot_mean_s": m.tpot_mean_s,
            "measured_latency_s": m.latency_s,
            "measured_throughput_tokens_per_s": m.throughput_tokens_per_s,
            "measured_latency_spread_frac": m.latency_spread_frac,
            "repeats": m.repeats,
            "measured_tpot_steps_s_json": json.dumps([round(x, 6) for x in m.tpot_s]),
            "predicted_tpot_steps_s_json": json.dumps([round(x, 6) for x in p.pred.tpot_s]),
        }
    )
    pred_sub = predicted_sublayer_ms(p.pred)
    for stage in (Stage.PREFILL, Stage.DECODE):
        for sub in SUBLAYERS:
            key = (stage.value, sub.value)
            pm = pred_sub.get(key)
            row[sublayer_column("device", *key)] = pm[1] if pm else ""
            row[sublayer_column("predicted_ms", *key)] = pm[0] if pm else None
            row[sublayer_column("measured_ms", *key)] = m.sublayer_ms.get(key)
            row[sublayer_column("measured_spread", *key)] = m.sublayer_spread.get(key)
        row[f"{stage.value}_layer_kind"] = m.sublayer_kind.get(stage.value, "")
    for kind in ("weights", "act", "resid", "kv_fetch", "kv_writeback", "head"):
        row[f"copy_{kind}_gb"] = m.copy_gb.get(kind, 0.0)
        row[f"copy_{kind}_busy_s"] = m.copy_s.get(kind, 0.0)
    row["weight_h2d_gbps"] = m.weight_h2d_gbps
    row["overlap_efficiency"] = m.overlap_efficiency
    row["spread_flag"] = m.latency_spread_frac > 0.05
    link = system.link.h2d_gbps if p.plan.pinned_weights else system.link.pageable_h2d_gbps
    bound_stages = [s.value for s, b in p.pred.bound_resource.items() if b == "pcie_h2d"]
    bws = [m.weight_h2d_gbps_by_stage[s] for s in bound_stages if s in m.weight_h2d_gbps_by_stage]
    row["transfer_bound_stages"] = ",".join(bound_stages)
    row["weight_h2d_vs_calibrated"] = (min(bws) / link) if bws else None
    row["calibrated_h2d_gbps"] = link
    row["cpu_linear_eff_vs_calibrated"] = m.cpu_linear_eff
    row.update(pinned_pool_columns(m.pinned_pool))
    checked = "logits_rel_err" in check
    row["logits_rel_err"] = check["logits_rel_err"] if checked else None
    row["tokens_match_frac"] = check["tokens_match_frac"] if checked else None
    row["logits_tolerance"] = LOGITS_RTOL if checked else None
    row["dataflow_problems"] = check["dataflow_problems"]
    row["dataflow_first_problem"] = check["dataflow_first_problem"]
    row["host_weights_shared_layers"] = weights.layers_share_weights
    row["reused_from"] = ""
    row.update(context)
    return row


def plan_table_rows(points: list[Point]) -> list[list[str]]:
    """Rows for the --predict-only table."""
    out = []
    for p in points:
        status = (
            ("skip: " + p.skip_reason) if p.skip_reason else (f"same as {p.duplicate_of}" if p.duplicate_of else "run")
        )
        if len(status) > 90:
            status = status[:87] + "..."
        if p.plan is None or p.pred is None:
            out.append([p.id, "-", "-", "-", "-", "-", status])
            continue
        out.append(
            [
                p.id,
                f"{policy_notation(p.plan.prefill_policy)} {policy_notation(p.plan.decode_policy)} "
                f"R={p.plan.gpu_resident_layers} n={p.plan.prefill_minibatches}",
                f"{p.pred.ttft_s:.3f}",
                _f(p.pred.tpot_mean_s),
                f"{p.pred.latency_s:.3f}",
                f"{p.est_s:.1f}" if not p.skip_reason and not p.duplicate_of else "-",
                status,
            ]
        )
    return out


__all__ = ["Options", "Point", "resolve_points", "run_points", "plan_table_rows"]


def system_running(system: SystemSpec, gqa_decode: Any) -> SystemSpec:
    """``system`` predicting the CPU GQA decode kernel a run used (its ``gqa_decode`` column; runs recorded before
    the column ran the grouped pair): an error when the profile holds no table of that kernel."""
    variant = gqa_decode if isinstance(gqa_decode, str) and gqa_decode else "grouped"
    if system.kernels is None or system.kernels.gqa_decode == variant:
        return system
    tables = system.kernels.with_gqa_decode(variant)
    if tables is None:
        raise LiaInputError(
            "gqa_decode",
            f"the run used the CPU GQA decode kernel '{variant}' and '{system.name}' has no attention table of it",
            f"predict with a profile that measured it (python -m calibrate.kernel_tables with LIA_GQA_DECODE={variant})",
        )
    return system.model_copy(update={"kernels": tables})


def repredict(rows: "Any", system: SystemSpec) -> "Any":
    """Predicted columns of measured rows recomputed under ``system`` (a newer profile): the plan from
    ``plan_json``, the (truncated) model from ``model`` and ``num_layers``, the workload and the GPU cap from
    their columns, the CPU GQA decode kernel from ``gqa_decode``. Measurements are untouched; nothing is fitted to
    them. Adds ``predicted_with``."""
    import pandas as pd
    from pydantic import ValidationError

    from lia_model.errors import from_validation_error
    from lia_model.inputs import resolve_model
    from lia_model.precision import make_precision
    from runtime.measure import predicted_sublayer_ms

    df = rows.copy()
    for i, r in df.iterrows():
        if not isinstance(r.get("plan_json"), str):
            continue
        sysr = system_running(system, r.get("gqa_decode"))
        model = resolve_model(str(r["model"]))
        model = model.model_copy(update={"num_layers": int(r["num_layers"])})
        wdt = r.get("weight_dtype")  # runs before the column: bf16
        precision = make_precision(wdt if isinstance(wdt, str) else "bf16")
        workload = Workload(
            batch=int(r["batch"]), input_len=int(r["input_len"]), output_len=int(r["output_len"]), precision=precision
        )
        cap = None if pd.isna(r.get("gpu_memory_gib")) else float(r["gpu_memory_gib"])
        sysc = capped_system(sysr, cap)
        try:
            plan = Plan.model_validate_json(r["plan_json"])
        except ValidationError as err:
            raise from_validation_error(err, f"plan_json of point '{r['point_id']}'", Plan) from None
        pred = predict(sysc, model, workload, plan, CostMode.OVERLAP)
        df.at[i, "predicted_feasible"] = pred.feasible
        df.at[i, "predicted_hbm_bytes"] = pred.memory[MemoryTier.HBM].required_bytes
        df.at[i, "predicted_hbm_available_bytes"] = pred.memory[MemoryTier.HBM].available_bytes
        if r.get("status") != "ran":  # a point that did not run (out of memory, say): its memory columns only
            continue
        add = predict(sysc, model, workload, plan, CostMode.ADDITIVE)
        df.at[i, "predicted_ttft_s"] = pred.ttft_s
        df.at[i, "predicted_tpot_mean_s"] = pred.tpot_mean_s
        df.at[i, "predicted_latency_s"] = pred.latency_s
        df.at[i, "predicted_throughput_tokens_per_s"] = pred.throughput_tokens_per_s
        df.at[i, "predicted_latency_additive_s"] = add.latency_s
        for col, value in _slowdown_cols(pred).items():
            df.at[i, col] = value
        for (stage, sub), (ms, _, _) in predicted_sublayer_ms(pred).items():
            col = sublayer_column("predicted_ms", stage, sub)
            if col in df.columns:
                df.at[i, col] = ms
        df.at[i, "predicted_with"] = system.name
    return df
