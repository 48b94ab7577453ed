"""Hardware specs: the pydantic schema of hwprofiles/ (docs/design.md section 5).

Units are in every field name. Every number carries a source: each spec has a ``source`` mapping from
field name (dotted for nested fields, e.g. ``isa.amx_bf16.per_core_tflops``) to where the number comes
from (datasheet, paper, or "calibrated on HOST on DATE"). A validator rejects a spec with a number that
has no source. Efficiency curves are size-dependent tables, interpolated in log2(tokens).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lia_model.plan import CpuIsa, HostTier

# Plausibility bounds: far outside any real device, tight enough that a typo (1e-30 GB/s, 1e9 GiB) is an
# input error rather than times of 1e30 s.
MIN_GBPS, MAX_GBPS = 1e-3, 1e6
MAX_TFLOPS = 1e6
MAX_GIB = 1e7
MAX_US = 1e7


class StrictSpec(BaseModel):
    """Frozen, no unknown fields, no inf or NaN, and no true/false where a number belongs."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and info.annotation in (int, float):
                    raise ValueError(f"{name} is a number, got {str(value).lower()}")
        return data


class EfficiencyPoint(StrictSpec):
    tokens: int = Field(ge=1, le=2**31, description="Rows of the matrix product (batch x new tokens).", examples=[256])
    efficiency: float = Field(gt=0.0, le=1.0, description="Achieved / peak throughput.", examples=[0.7])


def _check_table(points: list[EfficiencyPoint]) -> list[EfficiencyPoint]:
    if not points:
        raise ValueError("an efficiency table needs at least one point, e.g. [{tokens: 1, efficiency: 0.5}]")
    tokens = [p.tokens for p in points]
    if tokens != sorted(tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"efficiency table tokens must be strictly increasing, got {tokens}")
    return points


def interpolate_efficiency(points: tuple[EfficiencyPoint, ...] | list[EfficiencyPoint], tokens: float) -> float:
    """Efficiency at ``tokens`` rows: linear in log2(tokens) between points, clamped at the ends."""
    if tokens <= points[0].tokens:
        return points[0].efficiency
    if tokens >= points[-1].tokens:
        return points[-1].efficiency
    x = math.log2(tokens)
    for lo, hi in zip(points, points[1:]):
        if tokens <= hi.tokens:
            x0, x1 = math.log2(lo.tokens), math.log2(hi.tokens)
            w = (x - x0) / (x1 - x0)
            return lo.efficiency + w * (hi.efficiency - lo.efficiency)
    return points[-1].efficiency  # unreachable: the clamp above covers it


class Sourced(StrictSpec):
    """Mixin: a ``source`` mapping that must cover every numeric field."""

    source: dict[str, str] = Field(default_factory=dict, description="Field name -> where its number comes from.")

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> "Sourced":
        missing = [path for path in _numeric_paths(self) if not _has_source(self.source, path)]
        if missing:
            raise ValueError(
                f"numbers without a source: {', '.join(missing)}; add e.g. source: {{{missing[0]}: 'datasheet: ...'}}"
            )
        return self


# Fields whose default value is a definition rather than a number that needs a source: kv_pass_factor = 1 is
# "one pass over the KV cache", the roofline's own assumption; cpu_wake_us = 0 is "no wake-up cost modelled"
# (a profile measured before the calibrator timed it), cpu_idle_before_wake_us = 0 "any wait", and
# dma_slowdown_beside_cpu = 1 "the weight DMA's own slowdown beside CPU work not modelled".
DEFINITIONAL_DEFAULTS = frozenset(
    {"kv_pass_factor", "cpu_wake_us", "cpu_idle_before_wake_us", "dma_slowdown_beside_cpu"}
)


def _numeric_paths(spec: BaseModel, prefix: str = "") -> list[str]:
    paths: list[str] = []
    for name in type(spec).model_fields:
        if name == "source":
            continue
        value = getattr(spec, name)
        path = f"{prefix}{name}"
        if isinstance(value, bool):
            continue
        if name in DEFINITIONAL_DEFAULTS and value == type(spec).model_fields[name].default:
            continue  # at its default this number is a definition (its description says which), not a measurement
        if isinstance(value, (int, float)):
            paths.append(path)
        elif isinstance(value, BaseModel) and not isinstance(value, Sourced):
            paths.extend(_numeric_paths(value, path + "."))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, IsaSpec) and not item.present:
                    continue
                if isinstance(item, BaseModel) and not isinstance(item, Sourced):
                    paths.extend(_numeric_paths(item, f"{path}.{getattr(key, 'value', key)}."))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], EfficiencyPoint):
            paths.append(path)
    return paths


def _has_source(source: dict[str, str], path: str) -> bool:
    """A source for ``a.b.c`` may be given at ``a.b.c``, ``a.b`` or ``a`` (and must say something)."""
    parts = path.split(".")
    return any(str(source.get(".".join(parts[:k]), "")).strip() for k in range(len(parts), 0, -1))


class IsaSpec(StrictSpec):
    """Matrix throughput of one CPU ISA."""

    present: bool = Field(description="Whether the CPU has this ISA.")
    per_core_tflops: float = Field(
        ge=0.0,
        le=MAX_TFLOPS,
        description="Peak dense throughput of one core (datasheet or paper), "
        "or in a calibrated profile the best measured rate / cores.",
        examples=[0.5],
    )
    matmul_efficiency: list[EfficiencyPoint] = Field(
        default_factory=list, description="Linear-layer efficiency vs token count (empty when absent)."
    )
    attention_efficiency: list[EfficiencyPoint] = Field(
        default_factory=list, description="Attention (batched matmul) efficiency vs query tokens per sequence."
    )
    kv_pass_factor: float = Field(
        1.0,
        ge=1.0,
        description="Passes the attention kernel makes over the KV cache it reads: its memory time is "
        "(activations + kv_pass_factor x KV bytes) / bandwidth. 1 (the default) is one pass; the LIA paper's model "
        "uses 3.5; a calibrated profile measures it.",
        examples=[1.7],
    )
    backend: str = Field("onednn", description="Library whose kernels the numbers describe.")
    kernel_observed: Optional[str] = Field(None, description="Kernel ISA seen in ONEDNN_VERBOSE, if calibrated.")
    absent_reason: Optional[str] = Field(None, description="Why the ISA is marked absent (calibrated profiles).")

    @model_validator(mode="after")
    def _present_has_throughput(self) -> "IsaSpec":
        if self.present:
            if self.per_core_tflops <= 0:
                raise ValueError("a present ISA needs per_core_tflops > 0, e.g. per_core_tflops: 0.5")
            _check_table(self.matmul_efficiency)
            _check_table(self.attention_efficiency)
        return self


class CpuSpec(Sourced):
    name: str
    kind: Literal["cpu"] = "cpu"
    description: str = ""
    cores: int = Field(ge=1, le=100_000, description="Physical cores used for inference.", examples=[40])
    sockets: Optional[int] = Field(
        None,
        ge=1,
        le=64,
        description="CPU sockets the cores span (informational: the rates are for all the cores together).",
        examples=[2],
    )
    memory_read_gbps: float = Field(
        ge=MIN_GBPS,
        le=MAX_GBPS,
        description="Read bandwidth all cores can pull from local DDR (GEMV-like streaming).",
        examples=[265],
    )
    op_overhead_us: float = Field(
        ge=0, le=MAX_US, description="Fixed cost of launching one CPU sublayer.", examples=[20]
    )
    isa: dict[CpuIsa, IsaSpec] = Field(description="Throughput per matrix ISA.")
    amx_int8_per_core_tops: Optional[float] = Field(
        None,
        gt=0,
        le=MAX_TFLOPS,
        description="Peak dense int8 throughput of one core on the AMX int8 tiles "
        "(amx_int8; 1e12 ops/s), with amx_bf16's efficiency tables; runs int8-weight linears when the plan's ISA "
        "is amx_bf16. None: no AMX int8.",
        examples=[4.5],
    )
    dequant_gelems_per_s: Optional[float] = Field(
        None,
        gt=0,
        le=MAX_TFLOPS * 1e3,
        description="Weight or KV elements all cores unpack to bf16 per second "
        "(1e9/s) in a dequantising kernel (int4, int8 without AMX, fp8 weights; fp8/int8 KV). None: unknown.",
        examples=[1280],
    )

    @field_validator("isa")
    @classmethod
    def _some_isa_present(cls, isa: dict[CpuIsa, IsaSpec]) -> dict[CpuIsa, IsaSpec]:
        if not any(spec.present for spec in isa.values()):
            raise ValueError("at least one ISA must be present, e.g. avx512_fp32: {present: true, ...}")
        return isa

    def best_isa(self) -> CpuIsa:
        """The present ISA with the highest per-core peak."""
        present = [(spec.per_core_tflops, isa) for isa, spec in self.isa.items() if spec.present]
        return max(present, key=lambda t: t[0])[1]


class GpuSpec(Sourced):
    name: str
    kind: Literal["gpu"] = "gpu"
    description: str = ""
    memory_gib: float = Field(gt=0, le=MAX_GIB, description="Device memory.", examples=[80])
    reserved_gib: float = Field(
        ge=0, le=MAX_GIB, description="Taken by the CUDA context and libraries.", examples=[1.0]
    )
    hbm_gbps: float = Field(ge=MIN_GBPS, le=MAX_GBPS, description="Device memory bandwidth.", examples=[3350])
    bf16_peak_tflops: float = Field(
        gt=0,
        le=MAX_TFLOPS,
        description="Peak the efficiency tables are relative to: the datasheet's dense bf16 peak, or in a "
        "calibrated profile the best rate measured.",
        examples=[989],
    )
    fp8_peak_tflops: Optional[float] = Field(
        None,
        gt=0,
        le=MAX_TFLOPS,
        description="Dense fp8 (e4m3) tensor-core peak, with the same efficiency "
        "tables; None: no fp8 tensor cores (A100 and older).",
        examples=[1979],
    )
    dequant_gelems_per_s: Optional[float] = Field(
        None,
        gt=0,
        le=MAX_TFLOPS * 1e3,
        description="Weight or KV elements the GPU unpacks to bf16 per second "
        "(1e9/s) in a dequantising kernel (int8 / int4 weight-only; fp8/int8 KV). None: unknown.",
        examples=[33500],
    )
    matmul_efficiency: list[EfficiencyPoint]
    attention_efficiency: list[EfficiencyPoint]
    op_overhead_us: float = Field(
        ge=0, le=MAX_US, description="Fixed cost of launching one GPU sublayer.", examples=[10]
    )
    kv_pass_factor: float = Field(
        1.0,
        ge=1.0,
        description="Passes the attention kernel makes over the KV cache it reads (see IsaSpec).",
        examples=[1.0],
    )

    _tables = field_validator("matmul_efficiency", "attention_efficiency")(_check_table)


class LinkSpec(Sourced):
    name: str
    kind: Literal["link"] = "link"
    description: str = ""
    h2d_gbps: float = Field(
        ge=MIN_GBPS, le=MAX_GBPS, description="Host-to-device copy bandwidth from pinned memory.", examples=[55]
    )
    d2h_gbps: float = Field(
        ge=MIN_GBPS, le=MAX_GBPS, description="Device-to-host copy bandwidth into pinned memory.", examples=[55]
    )
    pageable_h2d_gbps: float = Field(
        ge=MIN_GBPS, le=MAX_GBPS, description="Host-to-device from pageable memory.", examples=[18]
    )
    pageable_d2h_gbps: float = Field(
        ge=MIN_GBPS, le=MAX_GBPS, description="Device-to-host into pageable memory.", examples=[18]
    )
    transfer_latency_us: float = Field(ge=0, le=MAX_US, description="Fixed cost of one copy.", examples=[10])


class MemoryTierSpec(Sourced):
    name: str
    kind: Literal["memory"] = "memory"
    tier: HostTier
    description: str = ""
    capacity_gib: float = Field(gt=0, le=MAX_GIB, description="Installed capacity.", examples=[512])
    read_gbps: float = Field(
        ge=MIN_GBPS, le=MAX_GBPS, description="Sustained read bandwidth (CPU or DMA).", examples=[265]
    )


class Provenance(StrictSpec):
    """Where a calibrated profile came from."""

    host: str
    date: str
    command: str
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class LinearTable(StrictSpec):
    """Measured time of the runtime's own sublayer function (norm, GEMM, bias, activation, residual and
    RoPE as the runtime runs them) at one weight shape, over token counts (rows b x q)."""

    sublayer: str = Field(description="qkv, out_proj, fc1 or fc2.")
    k: int = Field(ge=1, description="Input features (GEMM K).")
    n: int = Field(ge=1, description="Output features (GEMM N).")
    model: str = Field("", description="Catalog model the shape was measured for (a label).")
    weight_dtype: str = Field(
        "bf16",
        description="Stored weights of the measured kernel (lia_model.precision: bf16, int8 or fp8_e4m3, per output "
        "channel): the runtime's kernel for that dtype.",
    )
    tokens: list[int] = Field(description="Token counts, strictly increasing.")
    seconds: list[float] = Field(description="Median time per call at each token count.")
    issue_s: Optional[float] = Field(
        None,
        ge=0,
        le=1.0,
        description="GPU tables: the host's time to issue one call (Python and kernel launches), measured beside "
        "its CUDA-event time, median over the token counts; None: not measured.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "LinearTable":
        if not self.tokens or len(self.tokens) != len(self.seconds):
            raise ValueError(f"{self.sublayer} ({self.k}x{self.n}): tokens and seconds need the same, non-zero length")
        if self.tokens != sorted(set(self.tokens)) or self.tokens[0] < 1:
            raise ValueError(f"{self.sublayer} ({self.k}x{self.n}): tokens must be strictly increasing from >= 1")
        if any(not (s > 0 and math.isfinite(s)) for s in self.seconds):
            raise ValueError(f"{self.sublayer} ({self.k}x{self.n}): seconds must be positive and finite")
        return self


class AttentionFit(StrictSpec):
    """Time of the runtime's attention kernel of one kind in one phase, fitted on a calibration grid as
    t = overhead_s + s_per_byte x bytes + s_per_flop x FLOPs + s_per_row x rows (non-negative least squares),
    rows = batch x heads x q query rows (the kernels' parallel loop runs once per row: a fixed cost each)."""

    kind: Literal["fused", "score", "context"] = Field(description="fused: score and context in one kernel.")
    phase: Literal["decode", "prefill"] = Field(description="decode: one new token (q = 1); prefill: q = s.")
    heads: Literal["mha", "gqa", "any"] = Field(
        "any",
        description="mha: one query head per KV head (G = 1); gqa: "
        "G > 1 (decode runs a different kernel: see gqa_decode).",
    )
    gqa_decode: Optional[Literal["grouped", "sdpa"]] = Field(
        None,
        description="The CPU decode kernel with G > 1 this fit measured (runtime/kernels.py LIA_GQA_DECODE): a "
        "grouped matmul pair or SDPA over a group's heads as query rows. None: not a GQA decode fit, or one from "
        "before the choice existed (the grouped pair).",
    )
    overhead_s: float = Field(ge=0)
    s_per_byte: float = Field(ge=0)
    s_per_flop: float = Field(ge=0)
    s_per_row: float = Field(0.0, ge=0)
    fit_median_rel_err: float = Field(ge=0, description="Median |relative error| of the fit on its grid.")
    fit_max_rel_err: float = Field(ge=0)
    points: int = Field(ge=1, description="Grid points the fit used.")

    def seconds(self, nbytes: float, flops: float, rows: float) -> float:
        return self.overhead_s + self.s_per_byte * nbytes + self.s_per_flop * flops + self.s_per_row * rows


class AttentionGridPoint(StrictSpec):
    """One measured point of the calibrator's CPU prefill attention grid: the runtime's kernel of ``kind`` at one
    shape (q = s), the median over the calibration runs that measured it. The cost model interpolates between
    these (lia_model/attention_grid.py) where a shape lies inside the grid, and reads the fit elsewhere."""

    kind: Literal["fused", "score", "context"]
    batch: int = Field(ge=1)
    heads: int = Field(ge=1, description="Query heads.")
    kv_heads: int = Field(ge=1)
    s: int = Field(ge=1, description="Sequence length (prefill: q = s query rows per head).")
    head_dim: int = Field(ge=1)
    seconds: float = Field(gt=0, description="The kernel's time at this shape (median over runs).")
    runs: int = Field(1, ge=1, description="Distinct calibration runs the median is over.")


class KernelTables(Sourced):
    """Calibrated times of the runtime's own kernels (calibrate/kernel_tables.py). When a system has them,
    the cost model reads a sublayer's time from them instead of the roofline with efficiency curves."""

    cpu_isa: CpuIsa = Field(description="The CPU ISA the CPU tables were measured with (the runtime's default path).")
    setup: str = Field("", description="Threads, binding and allocator the kernels ran under (runtime/cpu_setup.py).")
    cpu_linear: list[LinearTable] = Field(default_factory=list)
    gpu_linear: list[LinearTable] = Field(default_factory=list)
    cpu_attention: list[AttentionFit] = Field(default_factory=list)
    gpu_attention: list[AttentionFit] = Field(default_factory=list)
    cpu_attention_grid: list[AttentionGridPoint] = Field(
        default_factory=list,
        description="The measured CPU prefill attention grid the fits were made from (per point the median over "
        "runs); empty: the fits alone (profiles from before the grid was kept).",
    )
    gpu_dispatch_us: float = Field(ge=0, description="Host time to launch one GPU sublayer (the floor of its time).")
    cpu_slowdown_beside_dma: float = Field(
        ge=1.0,
        description="CPU linear time while pinned H2D weight DMA runs, "
        "over its time alone (DDR shared by the cores and the copy engine).",
    )
    gqa_decode: Literal["grouped", "sdpa"] = Field(
        "grouped",
        description="The CPU decode attention kernel with G > 1 the runtime runs (runtime/kernels.py LIA_GQA_DECODE), "
        "whose fit the cost model reads; profiles from before the choice existed measured the grouped pair.",
    )
    cpu_attention_slowdown_beside_dma: Optional[float] = Field(
        None,
        ge=1.0,
        description="CPU decode attention's time while the weight DMA runs, over its time alone (the calibrator's "
        "attention case beside the feeder); None: attention slows as the linears do (cpu_slowdown_beside_dma).",
    )
    dma_slowdown_beside_cpu: float = Field(
        1.0,
        ge=1.0,
        le=10.0,
        description="The weight DMA's time while the CPU runs memory-bound work beside it, over its time alone (the "
        "calibrator's beside-DMA probe: the feeder's H2D rate alone over its rate beside each CPU case). 1: not modelled.",
    )
    cpu_wake_us: float = Field(
        0.0,
        ge=0,
        le=1e5,
        description="Extra time of a CPU kernel call that starts after the CPU waited (parked OpenMP workers, idle "
        "cores): median over decode attention cases of the call after a sleep minus back to back, cold caches "
        "both ways. 0: not modelled.",
    )
    cpu_idle_before_wake_us: float = Field(
        0.0,
        ge=0,
        le=1e6,
        description="A CPU call pays cpu_wake_us when the CPU waited longer than this before it (the longest "
        "measured gap up to which the extra stays below half the wake); 0: any wait.",
    )

    def linear(self, device: str, sublayer: str, k: int, n: int, weight_dtype: str = "bf16") -> Optional[LinearTable]:
        for t in self.cpu_linear if device == "cpu" else self.gpu_linear:
            if t.sublayer == sublayer and t.k == k and t.n == n and t.weight_dtype == weight_dtype:
                return t
        return None

    def weight_dtypes(self) -> set[str]:
        """The stored weight dtypes the linear tables cover on every measured device (a dtype the GPU tables
        lack counts only when no GPU was measured)."""
        cpu = {t.weight_dtype for t in self.cpu_linear}
        return cpu & {t.weight_dtype for t in self.gpu_linear} if self.gpu_linear else cpu

    def attention(self, device: str, kind: str, phase: str, heads: str = "any") -> Optional[AttentionFit]:
        """The fit for (kind, phase) and head layout; a fit for "any" layout serves both. A CPU GQA decode fit is
        the one of the kernel the runtime runs (``gqa_decode``; an untagged one measured the grouped pair)."""
        fits = [
            f
            for f in (self.cpu_attention if device == "cpu" else self.gpu_attention)
            if f.kind == kind and f.phase == phase and (device != "cpu" or self._runs_gqa_decode_kernel(f))
        ]
        return next((f for f in fits if f.heads == heads), None) or next((f for f in fits if f.heads == "any"), None)

    def gqa_decode_kernels(self) -> set[str]:
        """The CPU GQA decode kernels the fused decode fits measured (an untagged fit: the grouped pair)."""
        return {
            f.gqa_decode or "grouped"
            for f in self.cpu_attention
            if (f.kind, f.phase, f.heads) == ("fused", "decode", "gqa")
        }

    def with_gqa_decode(self, variant: str) -> Optional["KernelTables"]:
        """These tables predicting the CPU GQA decode kernel ``variant``; None when no fit of it was measured (and
        fits of the other exist). Runs recorded before the choice existed ran "grouped"."""
        measured = self.gqa_decode_kernels()
        if measured and variant not in measured:
            return None
        return self.model_copy(update={"gqa_decode": variant})

    def _runs_gqa_decode_kernel(self, fit: AttentionFit) -> bool:
        """False for a CPU fused GQA decode fit of another kernel than the runtime's (``gqa_decode``)."""
        if (fit.kind, fit.phase, fit.heads) != ("fused", "decode", "gqa"):
            return True
        return (fit.gqa_decode or "grouped") == self.gqa_decode


def table_seconds(table: LinearTable, tokens: float) -> float:
    """Time at ``tokens``: linear in log(time) over log(tokens) between measured points; below the first
    point its time (a GEMV does not get faster with fewer rows); past the last point proportional to the
    tokens (the largest products are compute-bound)."""
    ts, ss = table.tokens, table.seconds
    if tokens <= ts[0]:
        return ss[0]
    if tokens >= ts[-1]:
        return ss[-1] * tokens / ts[-1]
    for (t0, s0), (t1, s1) in zip(zip(ts, ss), zip(ts[1:], ss[1:])):
        if tokens <= t1:
            w = (math.log(tokens) - math.log(t0)) / (math.log(t1) - math.log(t0))
            return math.exp(math.log(s0) + w * (math.log(s1) - math.log(s0)))
    return ss[-1]  # unreachable


class SystemSpec(Sourced):
    """A composed system: one CPU, one GPU, one link, DDR and optionally CXL."""

    name: str
    kind: Literal["system"] = "system"
    description: str = ""
    cpu: CpuSpec
    gpu: GpuSpec
    link: LinkSpec
    ddr: MemoryTierSpec
    cxl: Optional[MemoryTierSpec] = None
    host_reserved_gib: float = Field(
        ge=0, le=MAX_GIB, description="Host memory kept for the OS and runtime.", examples=[16]
    )
    memory_headroom_fraction: float = Field(
        ge=0, lt=1, description="Fraction of each tier left free as headroom.", examples=[0.05]
    )
    provenance: Optional[Provenance] = None
    kernels: Optional[KernelTables] = Field(None, description="Calibrated times of the runtime's own kernels.")

    @model_validator(mode="after")
    def _tiers_match(self) -> "SystemSpec":
        if self.ddr.tier != HostTier.DDR:
            raise ValueError(f"ddr must be a memory tier with tier: ddr, got tier: {self.ddr.tier.value}")
        if self.cxl is not None and self.cxl.tier != HostTier.CXL:
            raise ValueError(f"cxl must be a memory tier with tier: cxl, got tier: {self.cxl.tier.value}")
        return self

    def tier(self, tier: HostTier) -> MemoryTierSpec:
        spec = self.ddr if tier == HostTier.DDR else self.cxl
        if spec is None:
            from lia_model.errors import LiaInputError

            raise LiaInputError(
                "plan.tier",
                f"the plan puts data in {tier.value.upper()} but system {self.name} has no CXL",
                "use weight_tier/kv_tier ddr, or a system with CXL (e.g. spr-h100-cxl)",
            )
        return spec

    @property
    def has_cxl(self) -> bool:
        return self.cxl is not None
