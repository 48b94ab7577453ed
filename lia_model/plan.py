"""The Plan: every knob of one CPU/GPU cooperative execution, typed and frozen.

Policy vectors use the paper's notation: one entry per sublayer (qkv, attn_score, attn_context,
out_proj, fc1, fc2), **1 = CPU, 0 = GPU**. In code always go through ``Device.CPU`` / ``Device.GPU``.
The same Plan object flows from the optimiser to the cost model and the runtime unchanged, and it
round-trips through JSON (``Plan.model_validate_json(plan.model_dump_json()) == plan``).
"""

from __future__ import annotations

from enum import Enum, IntEnum
from functools import lru_cache
from typing import Annotated, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictBool, model_validator

from lia_model.errors import LiaInputError
from lia_model.sublayers import NUM_SUBLAYERS, SUBLAYERS, Sublayer


class Device(IntEnum):
    """Where a sublayer runs. Values are the paper's notation."""

    GPU = 0
    CPU = 1


class HostTier(str, Enum):
    """Host memory tier holding streamed weights or the KV cache of streamed layers."""

    DDR = "ddr"
    CXL = "cxl"


class ExpertFetch(str, Enum):
    """How a GPU MoE sublayer of a streamed layer gets its experts' weights."""

    ALL = "all"  # every expert, prefetched with the layer's weights (beside compute)
    ROUTED = "routed"  # only the experts the router picked, fetched once it has run (on the chain)


class CpuIsa(str, Enum):
    """CPU matrix instruction set a plan's CPU sublayers use."""

    AMX_BF16 = "amx_bf16"
    AVX512_BF16 = "avx512_bf16"
    AVX512_FP32 = "avx512_fp32"
    AVX2_FP32 = "avx2_fp32"  # x86 CPUs without AVX-512: fp32 on MKL's / oneDNN's AVX2 (or generic) path
    SVE2_BF16 = "sve2_bf16"


def _parse_policy(value: object) -> tuple[Device, ...]:
    """Accept (0,1,1,0,0,0), [0,1,...], "011000", "0,1,1,0,0,0" or device names ("gpu", "cpu")."""
    items: list[object]
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        items = [t for t in text.replace(",", " ").split()] if ("," in text or " " in text) else list(text)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"a policy vector is 6 entries of 0 (GPU) or 1 (CPU), got {value!r}")
    if len(items) != NUM_SUBLAYERS:
        raise ValueError(
            f"a policy vector has {NUM_SUBLAYERS} entries (one per sublayer "
            f"{', '.join(s.value for s in SUBLAYERS)}), got {len(items)}: {value!r}; example: (0,1,1,0,0,0)"
        )
    devices = []
    for item in items:
        if isinstance(item, Device):
            devices.append(item)
        elif isinstance(item, str) and item.strip().lower() in ("cpu", "gpu"):
            devices.append(Device[item.strip().upper()])
        elif str(item).strip() in ("0", "1"):
            devices.append(Device(int(str(item).strip())))
        else:
            raise ValueError(f"policy entry {item!r} is not 0 (GPU) or 1 (CPU); example: (0,1,1,0,0,0)")
    return tuple(devices)


Policy = Annotated[
    tuple[Device, Device, Device, Device, Device, Device],
    BeforeValidator(_parse_policy),
    PlainSerializer(lambda p: [int(d) for d in p], return_type=list[int]),
]


def policy(*devices: Device) -> tuple[Device, ...]:
    """Build a policy vector from six Device values (helper for readable code)."""
    return _parse_policy(list(devices))


ALL_GPU: tuple[Device, ...] = (Device.GPU,) * NUM_SUBLAYERS
ALL_CPU: tuple[Device, ...] = (Device.CPU,) * NUM_SUBLAYERS
# The sublayers that write (qkv) and read (attention) the KV cache: on the GPU when it lives there
KV_SUBLAYERS: frozenset[Sublayer] = frozenset({Sublayer.QKV, Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT})
ATTENTION_ON_CPU: tuple[Device, ...] = tuple(
    Device.CPU if s in (Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT) else Device.GPU for s in SUBLAYERS
)


def policy_notation(p: tuple[Device, ...]) -> str:
    """Paper notation, e.g. ``(0,1,1,0,0,0)``."""
    return "(" + ",".join(str(int(d)) for d in p) + ")"


def policy_in_words(p: tuple[Device, ...]) -> str:
    """E.g. ``GPU: qkv, out_proj, fc1, fc2; CPU: attn_score, attn_context``."""
    on_gpu = [s.value for s, d in zip(SUBLAYERS, p) if d == Device.GPU]
    on_cpu = [s.value for s, d in zip(SUBLAYERS, p) if d == Device.CPU]
    if not on_cpu:
        return "all on GPU"
    if not on_gpu:
        return "all on CPU"
    return f"GPU: {', '.join(on_gpu)}; CPU: {', '.join(on_cpu)}"


@lru_cache(maxsize=1 << NUM_SUBLAYERS)  # 64 vectors, built once each (the optimiser asks for them often)
def policy_from_index(index: int) -> tuple[Device, ...]:
    return tuple(Device((index >> i) & 1) for i in range(NUM_SUBLAYERS))


def policy_index(p: tuple[Device, ...]) -> int:
    """The inverse of ``policy_from_index``: bit i is sublayer i's device (1 = CPU)."""
    return sum(int(d) << i for i, d in enumerate(p))


class Plan(BaseModel):
    """One execution plan. Frozen: what the optimiser returns is what the runtime executes.

    The CPU ISA is chosen per stage (``prefill_cpu_isa``, ``decode_cpu_isa``): a GEMM of many prompt tokens
    and a GEMV-like decode step can be fastest on different instruction sets. ``cpu_isa=X`` is accepted on
    input (and in ``model_copy(update=...)``) as shorthand for both; ``plan.cpu_isa`` reads the ISA when both
    stages use the same one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_policy: Policy = Field(description="Where each sublayer runs in prefill (1 = CPU, 0 = GPU).")
    decode_policy: Policy = Field(description="Where each sublayer runs in decode (1 = CPU, 0 = GPU).")
    gpu_resident_layers: int = Field(
        0, ge=0, strict=True, description="The first N decoder layers keep weights and KV on the GPU and run all-GPU."
    )
    prefill_minibatches: int = Field(
        1, ge=1, strict=True, description="The prefill batch is split into this many equal chunks that pipeline."
    )
    weight_tier: HostTier = Field(HostTier.DDR, description="Host tier holding the streamed layers' weights.")
    cxl_weight_layers: int = Field(
        0,
        ge=0,
        strict=True,
        description="With weight_tier ddr: this many of the streamed layers (the last ones) keep their "
        "weights in CXL instead, a split of the weights between the tiers (weight_tier cxl: all of them).",
    )
    kv_tier: HostTier = Field(HostTier.DDR, description="Host tier holding the streamed layers' KV cache.")
    streamed_kv_on_gpu: StrictBool = Field(
        False,
        description="The streamed layers keep their KV cache in GPU memory (FlexGen's cache on the GPU), not in the "
        "host tier: GPU attention reads it there, nothing is fetched or written back over PCIe. qkv, attn_score and "
        "attn_context then run on the GPU in both stages.",
    )
    expert_fetch: ExpertFetch = Field(
        ExpertFetch.ALL,
        description="MoE models: prefetch every expert of a GPU MLP sublayer (all), or fetch "
        "only the routed experts once the router has run (routed). Dense models: all.",
    )
    pinned_weights: StrictBool = Field(True, description="Page-locked host weights: H2D copies are async DMA.")
    overlap: StrictBool = Field(True, description="Prefetch the next layer's weights into a second GPU buffer.")
    prefill_cpu_isa: CpuIsa = Field(CpuIsa.AMX_BF16, description="Matrix ISA of the CPU sublayers in prefill.")
    decode_cpu_isa: CpuIsa = Field(CpuIsa.AMX_BF16, description="Matrix ISA of the CPU sublayers in decode.")
    head_device: Optional[Device] = Field(
        None,
        description="Where the embeddings and the LM head live and run (1 = CPU, 0 = GPU); None: the CPU "
        "when the plan runs nothing on the GPU (all-CPU policies, no resident layer), else the GPU.",
    )
    label: str = Field("", description="Free-text name (e.g. the baseline it reproduces); not a knob.")

    @model_validator(mode="before")
    @classmethod
    def _one_isa_for_both_stages(cls, data: object) -> object:
        """``cpu_isa: X`` (a plan of schema lia.plan/1, or shorthand) sets both stages' ISA."""
        if isinstance(data, dict) and "cpu_isa" in data:
            data = dict(data)
            isa = data.pop("cpu_isa")
            clash = [k for k in ("prefill_cpu_isa", "decode_cpu_isa") if k in data and data[k] != isa]
            if clash:
                raise ValueError(
                    f"cpu_isa ({isa}) contradicts {clash[0]} ({data[clash[0]]}); give either cpu_isa "
                    "or prefill_cpu_isa and decode_cpu_isa"
                )
            data.setdefault("prefill_cpu_isa", isa)
            data.setdefault("decode_cpu_isa", isa)
        return data

    def model_copy(self, *, update: "dict | None" = None, deep: bool = False) -> "Plan":
        """As pydantic's, and ``update={"cpu_isa": X}`` sets both stages' ISA."""
        if update and "cpu_isa" in update:
            update = dict(update)
            isa = CpuIsa(update.pop("cpu_isa"))
            update.update(prefill_cpu_isa=isa, decode_cpu_isa=isa)
        return super().model_copy(update=update, deep=deep)

    @property
    def cpu_isa(self) -> CpuIsa:
        """The ISA of both stages; an error when they differ (read prefill_cpu_isa / decode_cpu_isa then)."""
        if self.prefill_cpu_isa != self.decode_cpu_isa:
            raise LiaInputError(
                "plan.cpu_isa",
                f"the plan uses {self.prefill_cpu_isa.value} in prefill and {self.decode_cpu_isa.value} in decode",
                "read prefill_cpu_isa and decode_cpu_isa (one ISA per stage)",
            )
        return self.prefill_cpu_isa

    def stage_cpu_isa(self, stage: "object") -> CpuIsa:
        """The CPU ISA of one stage (``lia_model.sublayers.Stage``)."""
        return self.prefill_cpu_isa if getattr(stage, "value", stage) == "prefill" else self.decode_cpu_isa

    def describe(self) -> str:
        """Multi-line description in paper notation and in words."""
        return "\n".join(
            [
                f"prefill {policy_notation(self.prefill_policy)}  {policy_in_words(self.prefill_policy)}",
                f"decode  {policy_notation(self.decode_policy)}  {policy_in_words(self.decode_policy)}",
                f"GPU-resident layers {self.gpu_resident_layers}, prefill minibatches {self.prefill_minibatches}, "
                f"weights in {self._weights_where()}, KV in {self._kv_where()}, "
                f"{'' if self.expert_fetch == ExpertFetch.ALL else 'routed experts fetched on demand, '}"
                f"pinned={self.pinned_weights}, overlap={self.overlap}, CPU ISA {self._isa_words()}, "
                f"embeddings and LM head on the {head_device(self).name}",
            ]
        )

    @property
    def isa_label(self) -> str:
        """The CPU ISA for tables and CSV rows: one name when both stages use it, else ``PREFILL/DECODE``."""
        if self.prefill_cpu_isa == self.decode_cpu_isa:
            return self.prefill_cpu_isa.value
        return f"{self.prefill_cpu_isa.value}/{self.decode_cpu_isa.value}"

    def _isa_words(self) -> str:
        if self.prefill_cpu_isa == self.decode_cpu_isa:
            return self.prefill_cpu_isa.value
        return f"{self.prefill_cpu_isa.value} (prefill) / {self.decode_cpu_isa.value} (decode)"

    @property
    def kv_home(self) -> str:
        """Where the streamed layers' KV cache lives, for tables and CSV rows: ``hbm``, or the host tier."""
        return "hbm" if self.streamed_kv_on_gpu else self.kv_tier.value

    def _kv_where(self) -> str:
        return "HBM (every layer)" if self.streamed_kv_on_gpu else self.kv_tier.value.upper()

    def _weights_where(self) -> str:
        if self.cxl_weight_layers:
            return f"DDR ({self.cxl_weight_layers} streamed layers in CXL)"
        return self.weight_tier.value.upper()

    @model_validator(mode="after")
    def _one_way_to_say_cxl(self) -> "Plan":
        if self.cxl_weight_layers and self.weight_tier == HostTier.CXL:
            raise ValueError(
                "cxl_weight_layers splits DDR weights; with weight_tier cxl every streamed layer's "
                "weights are in CXL already: use weight_tier ddr with cxl_weight_layers N, or "
                "cxl_weight_layers 0"
            )
        return self

    @model_validator(mode="after")
    def _kv_on_gpu_needs_gpu_attention(self) -> "Plan":
        """KV in GPU memory for every layer: the sublayers that write it (qkv) and read it (attention) run on the
        GPU in both stages (the runtime has no path that moves a GPU-homed cache to the CPU or new K/V into it
        from a CPU qkv), and kv_tier, the host tier of a cache that is not in the host, stays at its default."""
        if not self.streamed_kv_on_gpu:
            return self
        if self.kv_tier != HostTier.DDR:
            raise ValueError(
                "streamed_kv_on_gpu keeps the KV cache in GPU memory, so it has no host tier: use kv_tier ddr"
            )
        for stage, policy in (("prefill_policy", self.prefill_policy), ("decode_policy", self.decode_policy)):
            on_cpu = [s.value for s, d in zip(SUBLAYERS, policy) if d == Device.CPU and s in KV_SUBLAYERS]
            if on_cpu:
                raise ValueError(
                    f"streamed_kv_on_gpu needs qkv, attn_score and attn_context on the GPU, but the {stage} runs "
                    f"{', '.join(on_cpu)} on the CPU: put them on the GPU (0) or set streamed_kv_on_gpu false"
                )
        return self

    def cxl_weight_layer_count(self, streamed_layers: int) -> int:
        """Streamed layers whose weights are in CXL."""
        return streamed_layers if self.weight_tier == HostTier.CXL else self.cxl_weight_layers


def head_device(plan: Plan) -> Device:
    """Where the plan's embeddings and LM head live: ``plan.head_device``, or when that is None the CPU for a
    plan that runs nothing on the GPU (both policies all-CPU, no resident layer) and the GPU otherwise."""
    if plan.head_device is not None:
        return plan.head_device
    uses_gpu = plan.gpu_resident_layers > 0 or Device.GPU in (*plan.prefill_policy, *plan.decode_policy)
    return Device.GPU if uses_gpu else Device.CPU


def check_plan_against(plan: Plan, num_layers: int, batch: int) -> None:
    """Structural checks that depend on the model and workload (not on memory)."""
    if plan.gpu_resident_layers > num_layers:
        raise LiaInputError(
            "plan.gpu_resident_layers",
            f"{plan.gpu_resident_layers} resident layers but the model has {num_layers}",
            f"use a value from 0 to {num_layers}",
        )
    streamed = num_layers - plan.gpu_resident_layers
    if plan.cxl_weight_layers > streamed:
        raise LiaInputError(
            "plan.cxl_weight_layers",
            f"{plan.cxl_weight_layers} layers' weights in CXL but only {streamed} layers are streamed",
            f"use a value from 0 to {streamed}",
        )
    if plan.prefill_minibatches > batch or batch % plan.prefill_minibatches != 0:
        raise LiaInputError(
            "plan.prefill_minibatches",
            f"{plan.prefill_minibatches} minibatches do not split batch {batch} into equal chunks",
            "use a divisor of the batch, e.g. 1",
        )
