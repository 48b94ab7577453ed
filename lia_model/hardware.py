"""Hardware specs: the pydantic schema of hwprofiles/ (DESIGN.md section 5).

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


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EfficiencyPoint(_Spec):
    tokens: int = Field(ge=1, description="Rows of the matrix product (batch x new tokens).", examples=[256])
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


class Sourced(_Spec):
    """Mixin: a ``source`` mapping that must cover every numeric field."""

    source: dict[str, str] = Field(default_factory=dict, description="Field name -> where its number comes from.")

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> "Sourced":
        missing = [path for path in _numeric_paths(self) if not _has_source(self.source, path)]
        if missing:
            raise ValueError(
                f"numbers without a source: {', '.join(missing)}; add e.g. "
                f"source: {{{missing[0]}: 'datasheet: ...'}}"
            )
        return self


def _numeric_paths(spec: BaseModel, prefix: str = "") -> list[str]:
    paths: list[str] = []
    for name in type(spec).model_fields:
        if name == "source":
            continue
        value = getattr(spec, name)
        path = f"{prefix}{name}"
        if isinstance(value, bool) or name not in spec.model_fields_set:
            continue  # a field left at its default is a definition (its description says which), not a number
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
    """A source for ``a.b.c`` may be given at ``a.b.c``, ``a.b`` or ``a``."""
    parts = path.split(".")
    return any(".".join(parts[:k]) in source for k in range(len(parts), 0, -1))


class IsaSpec(_Spec):
    """Matrix throughput of one CPU ISA."""

    present: bool = Field(description="Whether the CPU has this ISA.")
    per_core_tflops: float = Field(ge=0.0, description="Peak dense throughput of one core (datasheet or paper), "
                                   "or in a calibrated profile the best measured rate / cores.", examples=[0.5])
    matmul_efficiency: list[EfficiencyPoint] = Field(
        default_factory=list, description="Linear-layer efficiency vs token count (empty when absent)."
    )
    attention_efficiency: list[EfficiencyPoint] = Field(
        default_factory=list, description="Attention (batched matmul) efficiency vs query tokens per sequence."
    )
    kv_pass_factor: float = Field(
        1.0, ge=1.0, description="Passes the attention kernel makes over the KV cache it reads: its memory time is "
        "(activations + kv_pass_factor x KV bytes) / bandwidth. 1 (the default) is one pass; the LIA paper's model "
        "uses 3.5; a calibrated profile measures it.", examples=[1.7])
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
    cores: int = Field(ge=1, description="Physical cores used for inference.", examples=[40])
    memory_read_gbps: float = Field(
        gt=0, description="Read bandwidth all cores can pull from local DDR (GEMV-like streaming).", examples=[265]
    )
    op_overhead_us: float = Field(ge=0, description="Fixed cost of launching one CPU sublayer.", examples=[20])
    isa: dict[CpuIsa, IsaSpec] = Field(description="Throughput per matrix ISA.")

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
    memory_gib: float = Field(gt=0, description="Device memory.", examples=[80])
    reserved_gib: float = Field(ge=0, description="Taken by the CUDA context and libraries.", examples=[1.0])
    hbm_gbps: float = Field(gt=0, description="Device memory bandwidth.", examples=[3350])
    bf16_peak_tflops: float = Field(
        gt=0, description="Peak the efficiency tables are relative to: the datasheet's dense bf16 peak, or in a "
                          "calibrated profile the best rate measured.", examples=[989])
    matmul_efficiency: list[EfficiencyPoint]
    attention_efficiency: list[EfficiencyPoint]
    op_overhead_us: float = Field(ge=0, description="Fixed cost of launching one GPU sublayer.", examples=[10])
    kv_pass_factor: float = Field(
        1.0, ge=1.0, description="Passes the attention kernel makes over the KV cache it reads (see IsaSpec).",
        examples=[1.0])

    _tables = field_validator("matmul_efficiency", "attention_efficiency")(_check_table)


class LinkSpec(Sourced):
    name: str
    kind: Literal["link"] = "link"
    description: str = ""
    h2d_gbps: float = Field(gt=0, description="Host-to-device copy bandwidth from pinned memory.", examples=[55])
    d2h_gbps: float = Field(gt=0, description="Device-to-host copy bandwidth into pinned memory.", examples=[55])
    pageable_h2d_gbps: float = Field(gt=0, description="Host-to-device from pageable memory.", examples=[18])
    pageable_d2h_gbps: float = Field(gt=0, description="Device-to-host into pageable memory.", examples=[18])
    transfer_latency_us: float = Field(ge=0, description="Fixed cost of one copy.", examples=[10])


class MemoryTierSpec(Sourced):
    name: str
    kind: Literal["memory"] = "memory"
    tier: HostTier
    description: str = ""
    capacity_gib: float = Field(gt=0, description="Installed capacity.", examples=[512])
    read_gbps: float = Field(gt=0, description="Sustained read bandwidth (CPU or DMA).", examples=[265])


class Provenance(_Spec):
    """Where a calibrated profile came from."""

    host: str
    date: str
    command: str
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


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
    host_reserved_gib: float = Field(ge=0, description="Host memory kept for the OS and runtime.", examples=[16])
    memory_headroom_fraction: float = Field(
        ge=0, lt=1, description="Fraction of each tier left free as headroom.", examples=[0.05]
    )
    provenance: Optional[Provenance] = None

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
                "plan.tier", f"the plan puts data in {tier.value.upper()} but system {self.name} has no CXL",
                "use weight_tier/kv_tier ddr, or a system with CXL (e.g. spr-h100-cxl)",
            )
        return spec

    @property
    def has_cxl(self) -> bool:
        return self.cxl is not None
