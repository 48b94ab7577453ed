"""`lia run`: generate text from a local Hugging Face checkpoint with the plan the optimiser picks for this machine.

Order of work (everything that can fail on bad input fails before the weights are read):

1. open the checkpoint (config.json and safetensors headers: runnable architecture, every tensor present with
   the right shape) and its tokenizer; turn the prompts into token ids;
2. the system profile: ``--system``, else the newest calibrated profile in results/calibration/ (what
   ``lia calibrate`` writes), else a datasheet profile with a warning; GPU and host memory are capped at what
   this machine has;
3. group prompts into batches (the executor runs equal-length prompts: one batch per prompt length; the
   throughput objective also picks the batch size) and give each batch its plan: ``--plan``, the optimiser's,
   or the all-CPU plan on a machine without a GPU; check each fits (runtime/preflight.py) and that the whole
   checkpoint fits in host memory;
4. load the weights (progress bar), then per batch: execute, stream the text, and report the measured TTFT,
   TPOT and tokens/s beside the cost model's prediction for the same plan and the same number of tokens.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.plan import Plan, check_plan_against, policy_notation
from lia_model.precision import Precision
from lia_model.workload import Workload, make_workload
from runtime.generate import Codec, Sampling

CALIBRATION_DIR = Path("results/calibration")  # calibrate.cli.DEFAULT_OUT
DATASHEET_FALLBACK = "spr-h100"
DTYPES = ("bfloat16", "float32")


@dataclass
class RunOptions:
    model: str
    prompts: list[str]
    max_new_tokens: int = 32
    system: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    objective: str = "latency"
    tpot_max_ms: Optional[float] = None
    solver: str = "cbc"
    plan: Optional[Plan] = None
    plan_source: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    ids: bool = False
    ignore_eos: bool = False
    warmup: bool = False
    fake_gpu: bool = False
    dtype: str = "bfloat16"
    weight_dtype: str = "bf16"  # stored linear weights: bf16, int8 or fp8_e4m3 (quantised per row when loaded)
    stream: bool = True
    threads: Optional[int] = None  # CPU threads (default: cpu_setup.apply's, one per physical core less the feeder's)
    gpu_memory_gib: Optional[float] = None  # plan for and enforce a smaller GPU (runtime/preflight.py)
    trace_dir: Optional[str] = None  # one extra profiled (untimed) pass per batch, written as a Chrome trace here


@dataclass
class Batch:
    indices: list[int]  # prompt numbers (0-based, in input order)
    tokens: list[list[int]]
    workload: Workload
    plan: Plan
    plan_source: str
    prediction: object  # lia_model.costmodel.Prediction
    outputs: list[list[int]] = field(default_factory=list)  # generated ids per sequence (cut after EOS)
    texts: list[Optional[str]] = field(default_factory=list)
    ttft_s: float = float("nan")
    tpot_s: list[float] = field(default_factory=list)

    @property
    def generated(self) -> int:
        """Tokens per sequence the executor produced (every sequence runs until the batch stops)."""
        return 1 + len(self.tpot_s)

    def measured(self) -> dict[str, Optional[float]]:
        latency = self.ttft_s + sum(self.tpot_s)
        return {
            "ttft_s": self.ttft_s,
            "tpot_mean_s": statistics.fmean(self.tpot_s) if self.tpot_s else None,
            "latency_s": latency,
            "tokens_per_s": self.workload.batch * self.generated / latency,
        }

    def predicted(self) -> dict[str, Optional[float]]:
        """The prediction over the same number of decode steps as were run (EOS can stop a batch early)."""
        steps = list(self.prediction.tpot_s[: self.generated - 1])
        latency = self.prediction.ttft_s + sum(steps)
        return {
            "ttft_s": self.prediction.ttft_s,
            "tpot_mean_s": statistics.fmean(steps) if steps else None,
            "latency_s": latency,
            "tokens_per_s": self.workload.batch * self.generated / latency,
        }


@dataclass
class RunReport:
    model: object  # ModelSpec
    system: SystemSpec
    system_note: str
    backend: str
    dtype: str
    codec: str
    sampling: Sampling
    batches: list[Batch]
    load_s: float = 0.0
    load_gb: float = 0.0
    warnings: list[str] = field(default_factory=list)
    cpu_setup: str = ""  # runtime/cpu_setup.py's describe(): threads, binding, feeder core, allocator


# ---------------------------------------------------------------------------- checkpoint


def check_config(folder: str) -> None:
    """Refuse a checkpoint the runtime cannot run from its config.json alone (before any weight is read)."""
    import json

    from lia_model.hf_arch import runtime_model

    path = Path(folder) / "config.json"
    if not path.exists():
        return  # open_checkpoint says what is missing
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # ditto, with the file and line
    if isinstance(config, dict):
        runtime_model(config, name=Path(folder).resolve().name)


# ---------------------------------------------------------------------------- system


def _calibrated_default() -> Optional[Path]:
    found = sorted(CALIBRATION_DIR.glob("*.yaml"), key=lambda p: p.stat().st_mtime) if CALIBRATION_DIR.is_dir() else []
    return found[-1] if found else None


def _meminfo_gib(key: str) -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 2**30
    except (OSError, ValueError, IndexError):
        return None
    return None


def resolve_system(
    system: Optional[str], overrides: list[str], gpu_total_gib: Optional[float], warn: Callable[[str], None]
) -> tuple[SystemSpec, str]:
    """The profile the optimiser plans with, capped at this machine's GPU and host memory."""
    from lia_model.profiles import load_system

    if system is None:
        found = _calibrated_default()
        if found is not None:
            system, note = str(found), f"calibrated profile {found} (newest in {CALIBRATION_DIR}/)"
        else:
            system = DATASHEET_FALLBACK
            note = f"datasheet profile {DATASHEET_FALLBACK}"
            warn(
                f"no calibrated profile (none given with --system, none in {CALIBRATION_DIR}/): the plan and the "
                f"predictions use the datasheet profile {DATASHEET_FALLBACK}, not this machine; run "
                "`lia calibrate` and pass --system results/calibration/NAME.yaml"
            )
    else:
        note = f"profile {system}"
    spec = load_system(system, overrides)
    if spec.provenance is None and note.startswith("profile"):
        note += " (datasheet, not calibrated)"
        warn(
            f"{system} is a datasheet profile, not a calibration of this machine: predictions may be far off "
            "(run `lia calibrate`)"
        )
    caps = []
    if gpu_total_gib is not None and gpu_total_gib < spec.gpu.memory_gib:
        caps.append(f"gpu.memory_gib={gpu_total_gib:.2f}")
    host = _meminfo_gib("MemTotal")
    if host is not None and host < spec.ddr.capacity_gib:
        caps.append(f"ddr.capacity_gib={host:.2f}")
    if caps:
        spec = load_system(system, [*overrides, *caps])
        note += f"; capped at this machine ({', '.join(caps)})"
    return spec, note


# ---------------------------------------------------------------------------- prompts and plans


def encode_prompts(prompts: list[str], codec: Optional[Codec], vocab_size: int) -> list[list[int]]:
    from runtime.generate import parse_ids

    out = []
    for i, text in enumerate(prompts):
        where = f"prompt {i + 1}"
        ids = parse_ids(text, vocab_size, where) if codec is None else codec.encode(text)
        if not ids:
            raise LiaInputError(where, "encodes to no tokens", "give a non-empty prompt")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise LiaInputError(
                where,
                f"the tokenizer gave id {bad[0]}, outside the model's vocabulary [0, {vocab_size})",
                "the tokenizer belongs to another model",
            )
        out.append(ids)
    return out


def _predict(system: SystemSpec, model, workload: Workload, plan: Plan):
    from lia_model.costmodel import predict

    return predict(system, model, workload, plan)


def plan_batches(
    opts: RunOptions, system: SystemSpec, model, tokens: list[list[int]], has_gpu: bool, warn: Callable[[str], None]
) -> list[Batch]:
    """Batches of equal-length prompts, each with its plan and prediction (nothing allocated)."""
    from lia_model.baselines import ipex_plan
    from lia_model.optimizer import optimize
    from runtime.points import runnable_system, runtime_isa
    from runtime.preflight import preflight

    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(tokens):
        by_len.setdefault(len(ids), []).append(i)
    if len(by_len) > 1:
        warn(
            f"the prompts have {len(by_len)} different lengths: each length runs as its own batch (the executor "
            "batches equal-length prompts, no padding)"
        )
    isa = runtime_isa()
    system = runnable_system(system, isa)
    batches: list[Batch] = []
    no_gpu_noted = False
    for length, indices in by_len.items():
        remaining = list(indices)
        while remaining:
            workload = make_workload(len(remaining), length, opts.max_new_tokens, model, run_precision(opts))
            if opts.plan is not None:
                plan, source = opts.plan, opts.plan_source or "--plan"
            elif not has_gpu:
                plan, source = ipex_plan(system, model, workload), "all-CPU (no GPU)"
                if not no_gpu_noted:
                    warn(
                        "this machine has no CUDA GPU: every sublayer runs on the CPU (the ipex plan); the "
                        "optimiser's plan needs a GPU"
                    )
                    no_gpu_noted = True
            else:
                res = optimize(
                    system,
                    model,
                    workload,
                    opts.objective,
                    tpot_max_s=None if opts.tpot_max_ms is None else opts.tpot_max_ms * 1e-3,
                    solver=opts.solver,
                    max_batch=len(remaining),
                )
                workload, plan, source = res.workload, res.plan, f"optimiser ({opts.objective}, {opts.solver})"
            if isa.run is not None and isa.run in system.cpu.isa and system.cpu.isa[isa.run].present:
                plan = plan.model_copy(update={"cpu_isa": isa.run})
            check_plan_against(plan, model.num_layers, workload.batch)
            preflight(system, model, workload, plan, has_gpu=has_gpu)
            take, remaining = remaining[: workload.batch], remaining[workload.batch :]
            batches.append(
                Batch(take, [tokens[i] for i in take], workload, plan, source, _predict(system, model, workload, plan))
            )
    return batches


def run_precision(opts: RunOptions) -> Precision:
    """The run's precision: --weight-dtype (the runtime's KV cache is bf16); one clear error for what the runtime
    cannot run (runtime/weights.py check_runnable)."""
    from lia_model.precision import make_precision
    from runtime.weights import check_runnable

    precision = make_precision(opts.weight_dtype)
    check_runnable(precision)
    return precision


def check_host_memory(model, batches: list[Batch], itemsize: int, available_gib: Optional[float]) -> None:
    """The loader keeps every layer in host memory (resident ones too) plus the streamed layers' KV."""
    from runtime.executor import kv_arena_elements
    from runtime.weights import layer_layout

    if available_gib is None:
        return
    weight_dtype = batches[0].workload.precision.weight_dtype
    weights_b = layer_layout(model, weight_dtype).numel * model.num_layers * itemsize
    kv_b = max(kv_arena_elements(model, b.workload, b.plan) for b in batches) * itemsize
    need = (weights_b + kv_b) / 2**30
    if need > available_gib:
        raise LiaInputError(
            "host memory",
            f"the checkpoint's layers ({weights_b / 2**30:.1f} GiB) and KV cache "
            f"({kv_b / 2**30:.1f} GiB) need {need:.1f} GiB but {available_gib:.1f} GiB is available",
            "free memory, use fewer prompts or fewer new tokens, or a host with more memory",
        )


# ---------------------------------------------------------------------------- running


def run(
    opts: RunOptions, out: TextIO = sys.stdout, warn: Callable[[str], None] = lambda m: None, progress_factory=None
) -> RunReport:
    """Everything `lia run` does except printing the summary (the CLI does that)."""

    warnings: list[str] = []
    outer_warn = warn

    def warn(message: str) -> None:  # noqa: F811 - collect every warning into the report too
        warnings.append(message)
        outer_warn(message)

    if opts.dtype not in DTYPES:
        raise LiaInputError("--dtype", f"unknown dtype '{opts.dtype}'", f"use one of {', '.join(DTYPES)}")
    weight_dtype = run_precision(opts).weight_dtype
    if weight_dtype.value != "bf16" and opts.dtype != "bfloat16":
        raise LiaInputError(
            "--weight-dtype", f"{weight_dtype.value} weights run with bfloat16 compute only", "drop --dtype"
        )
    if opts.threads is not None and opts.threads < 1:
        raise LiaInputError("--threads", f"must be at least 1, got {opts.threads}", "e.g. --threads 16")
    if opts.max_new_tokens < 1:
        raise LiaInputError(
            "--max-new-tokens", f"must be at least 1, got {opts.max_new_tokens}", "e.g. --max-new-tokens 32"
        )
    if not opts.prompts:
        raise LiaInputError("--prompt", "no prompt given", "give --prompt TEXT or --prompts FILE")
    if opts.trace_dir:
        folder = Path(opts.trace_dir)
        if folder.exists() and (not folder.is_dir() or any(folder.glob("*.trace.json"))):
            raise LiaInputError(
                "--trace", f"'{folder}' is a file or already holds traces", "give a new or empty folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
    check_config(opts.model)  # an architecture the runtime cannot run is refused before torch is imported

    import torch

    from runtime import cpu_setup
    from runtime.backend import Backend
    from runtime.executor import Executor, GpuLayerCache
    from runtime.generate import Sampler, Stream, load_codec
    from runtime.hf_loader import load_checkpoint, open_checkpoint

    ckpt = open_checkpoint(opts.model)
    model = ckpt.model
    codec, why = (None, "--ids") if opts.ids else load_codec(ckpt.path)
    if codec is None and not opts.ids:
        warn(f"no tokenizer ({why}): prompts and outputs are token ids (pip install 'lia-modeler[hf]' for text)")
    tokens = encode_prompts(opts.prompts, codec, model.vocab_size)
    longest = max(len(t) for t in tokens) + opts.max_new_tokens
    if ckpt.sliding_window is not None and longest > ckpt.sliding_window:
        raise LiaInputError(
            "--max-new-tokens",
            f"prompt + output reach {longest} tokens, past {model.name}'s "
            f"sliding attention window of {ckpt.sliding_window}; the runtime attends to the whole "
            "context, which equals windowed attention only within the window",
            f"keep prompt + new tokens <= {ckpt.sliding_window}",
        )
    backend = Backend.detect(fake_gpu=opts.fake_gpu, dtype=getattr(torch, opts.dtype))
    setup = cpu_setup.apply(opts.threads)  # the calibrator's CPU setup: threads, binding, allocator
    gpu_total = torch.cuda.get_device_properties(backend.gpu_device).total_memory / 2**30 if backend.is_cuda else None
    system, note = resolve_system(opts.system, list(opts.overrides), gpu_total, warn)
    if opts.gpu_memory_gib is not None:
        from runtime.preflight import capped_system

        system = capped_system(system, opts.gpu_memory_gib)
        note += f"; GPU capped at {opts.gpu_memory_gib:g} GiB"
    batches = plan_batches(opts, system, model, tokens, backend.has_gpu, warn)
    check_host_memory(model, batches, backend.dtype.itemsize, _meminfo_gib("MemAvailable"))
    report = RunReport(
        model,
        system,
        note,
        backend.description,
        opts.dtype,
        codec.name if codec is not None else "token ids",
        opts.sampling,
        batches,
        warnings=warnings,
        cpu_setup=setup.describe(),
    )

    if backend.is_cuda:
        from runtime.preflight import apply_gpu_cap

        apply_gpu_cap(opts.gpu_memory_gib)
    from lia_model.plan import Device
    from runtime.executor import head_device

    # Embeddings and LM head where the plans put them (the GPU unless no plan uses it).
    head = (
        Device.GPU
        if any(head_device(b.plan, model.num_layers, backend.has_gpu) == Device.GPU for b in batches)
        else Device.CPU
    )
    t0 = time.perf_counter()
    if progress_factory is not None:
        with progress_factory(ckpt.source_bytes) as update:
            weights = load_checkpoint(ckpt, backend, progress=update, head_dev=head, weight_dtype=weight_dtype)
    else:
        weights = load_checkpoint(ckpt, backend, head_dev=head, weight_dtype=weight_dtype)
    report.load_s = time.perf_counter() - t0
    report.load_gb = ckpt.source_bytes / 1e9

    cache = GpuLayerCache()
    sampler = Sampler(opts.sampling)
    eos = set() if opts.ignore_eos else set(ckpt.eos_token_ids)
    traced: list[Path] = []
    for batch in batches:
        if batch.plan.pinned_weights != weights.arena.pinned and backend.is_cuda:
            weights.arena.set_pinned(batch.plan.pinned_weights)
        ex = Executor(backend, weights, batch.plan, batch.workload, layer_cache=cache)
        try:
            prompt = torch.tensor(batch.tokens, dtype=torch.long)
            if opts.warmup:
                # The whole length, not 2 tokens: every decode step has a new key length, and kernels built or
                # JIT-compiled per shape (oneDNN primitives, cuDNN graphs) would otherwise be paid in the timed run
                # (lia validate's median of repeats never sees them either).
                ex.generate(prompt, output_len=batch.workload.output_len, profile=False)
            B = batch.workload.batch
            outputs: list[list[int]] = [[] for _ in range(B)]
            done = [False] * B
            stream = Stream(codec, out) if opts.stream and B == 1 else None
            if stream is not None and len(batches) > 1:
                out.write(f"[prompt {batch.indices[0] + 1}] ")

            def on_token(step: int, ids, outputs=outputs, done=done, stream=stream) -> bool:
                values = ids.cpu().tolist()
                for b, t in enumerate(values):
                    if done[b]:
                        continue
                    if t in eos:
                        done[b] = True
                        continue
                    outputs[b].append(int(t))
                    if stream is not None:
                        stream.push(int(t))
                return bool(eos) and all(done)

            sampler.gen.manual_seed(opts.sampling.seed)
            result = ex.generate(prompt, profile=False, select=sampler, on_token=on_token)
            if stream is not None:
                stream.close()
            batch.outputs = outputs
            batch.texts = [codec.decode(o) if codec is not None else None for o in outputs]
            batch.ttft_s, batch.tpot_s = result.ttft_s, list(result.tpot_s)
            if opts.trace_dir:
                from runtime.trace import write_trace

                profiled = ex.generate(prompt, profile=True, select=sampler)
                name = f"batch{len(traced) + 1}-B{B}-L{batch.workload.input_len}.trace.json"
                traced.append(write_trace(profiled, Path(opts.trace_dir) / name, f"lia run: {report.model.name}"))
        finally:
            ex.close()
    return report


def report_json(report: RunReport, prompts: list[str]) -> dict:
    return {
        "schema": "lia.run/1",
        "model": report.model.name,
        "system": report.system.name,
        "system_note": report.system_note,
        "backend": report.backend,
        "cpu_setup": report.cpu_setup,
        "dtype": report.dtype,
        "tokenizer": report.codec,
        "decoding": report.sampling.describe(),
        "load_s": report.load_s,
        "load_gb": report.load_gb,
        "warnings": report.warnings,
        "batches": [
            {
                "prompts": b.indices,
                "workload": b.workload.model_dump(),
                "plan": b.plan.model_dump(mode="json"),
                "plan_source": b.plan_source,
                "generated_per_sequence": b.generated,
                "measured": b.measured(),
                "predicted": b.predicted(),
                "outputs": [
                    {"prompt_index": i, "prompt": prompts[i], "prompt_ids": t, "token_ids": o, "text": x}
                    for i, t, o, x in zip(b.indices, b.tokens, b.outputs, b.texts)
                ],
            }
            for b in report.batches
        ],
    }


def fmt_ms(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 1e3:.1f} ms"


def plan_words(plan: Plan) -> str:
    return (
        f"prefill {policy_notation(plan.prefill_policy)} decode {policy_notation(plan.decode_policy)}, "
        f"{plan.gpu_resident_layers} resident, {plan.prefill_minibatches} minibatch"
        f"{'es' if plan.prefill_minibatches > 1 else ''}"
    )
