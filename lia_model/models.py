"""Model architectures: the catalog and Hugging Face ``config.json`` parsing (pure: takes a dict)."""

from __future__ import annotations

import difflib
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lia_model.errors import LiaInputError
from lia_model.precision import Precision


class RopeScaling(BaseModel):
    """RoPE frequency scaling of a checkpoint (Hugging Face ``rope_scaling`` / ``rope_parameters``).

    ``linear``: every inverse frequency divided by ``factor``. ``llama3`` (Llama-3.1): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are divided by ``factor``, shorter than
    original_max_position_embeddings / high_freq_factor kept, and those between interpolated
    (runtime/rope.py has the formula).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rope_type: Literal["linear", "llama3"]
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_position_embeddings: int = Field(8192, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "RopeScaling":
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"rope_scaling.high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        return self


class ModelSpec(BaseModel):
    """Shapes of a decoder-only transformer. All sizes are element counts, not bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_layers: int = Field(
        ge=1,
        le=1024,
        description="Decoder layers (at most 1024: the largest models have "
        "about 130, and the optimiser's arrays grow with the count).",
    )
    hidden_size: int = Field(ge=1)
    ffn_size: int = Field(ge=1, description="Intermediate size of the MLP (MoE: of one routed expert).")
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1, description="Equal to num_heads for MHA, fewer for GQA.")
    head_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_context: int = Field(ge=1, description="Longest sequence (prompt + generated) the model supports.")
    gated_mlp: bool = Field(False, description="SwiGLU-style gate+up projections (fc1 holds both).")
    num_experts: int = Field(1, ge=1, description="MoE experts per layer (1 = dense).")
    experts_per_token: int = Field(1, ge=1, description="Experts each token is routed to.")
    shared_ffn_size: int = Field(
        0,
        ge=0,
        description="MoE: intermediate size of the shared expert MLP every token also passes through (0 = none).",
    )
    linear_bias: bool = Field(True, description="Linear layers carry bias vectors.")
    learned_positions: int = Field(0, ge=0, description="Rows of a learned position embedding (OPT).")
    tied_embeddings: bool = Field(True, description="The LM head shares the token embedding.")
    # Numerics only (the runtime's math; no cost term depends on them).
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every LayerNorm / RMSNorm.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base of models with rotary positions.")
    rope_scaling: Optional[RopeScaling] = Field(None, description="RoPE frequency scaling (e.g. Llama-3.1's).")
    checkpoint_precision: Optional[Precision] = Field(
        None,
        description="How the checkpoint stores its weights "
        "(from quantization_config / torch_dtype); the workload's "
        "default precision. None: bf16.",
    )
    source: str = Field("", description="Where the shapes come from.")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token cannot exceed num_experts")
        return self

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) per token: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_matrices(self) -> int:
        """Number of h x f matrices in fc1 (2 when gated: gate and up)."""
        return 2 if self.gated_mlp else 1

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def uses_rope(self) -> bool:
        """Rotary positions for the Llama family (gated MLP, no learned positions). Bloom's ALiBi is not
        modelled: a model with neither learned positions nor a gated MLP gets no position signal (timing is
        unaffected)."""
        return self.learned_positions == 0 and self.gated_mlp


_OPT_SOURCE = "Zhang et al. 2022, OPT paper Table 1 / facebook/opt-* config.json"

CATALOG: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(
            name="opt-30b",
            num_layers=48,
            hidden_size=7168,
            ffn_size=28672,
            num_heads=56,
            num_kv_heads=56,
            head_dim=128,
            vocab_size=50272,
            max_context=2048,
            learned_positions=2050,
            source=_OPT_SOURCE,
        ),
        ModelSpec(
            name="opt-66b",
            num_layers=64,
            hidden_size=9216,
            ffn_size=36864,
            num_heads=72,
            num_kv_heads=72,
            head_dim=128,
            vocab_size=50272,
            max_context=2048,
            learned_positions=2050,
            source=_OPT_SOURCE,
        ),
        ModelSpec(
            name="opt-175b",
            num_layers=96,
            hidden_size=12288,
            ffn_size=49152,
            num_heads=96,
            num_kv_heads=96,
            head_dim=128,
            vocab_size=50272,
            max_context=2048,
            learned_positions=2050,
            source=_OPT_SOURCE,
        ),
        ModelSpec(
            name="llama-2-70b",
            num_layers=80,
            hidden_size=8192,
            ffn_size=28672,
            num_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32000,
            max_context=4096,
            gated_mlp=True,
            linear_bias=False,
            tied_embeddings=False,
            source="meta-llama/Llama-2-70b-hf config.json",
        ),
        ModelSpec(
            name="llama-3.1-70b",
            num_layers=80,
            hidden_size=8192,
            ffn_size=28672,
            num_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_context=131072,
            gated_mlp=True,
            linear_bias=False,
            tied_embeddings=False,
            rope_theta=500000.0,
            rope_scaling=RopeScaling(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
            source="meta-llama/Llama-3.1-70B config.json",
        ),
        ModelSpec(
            name="bloom-176b",
            num_layers=70,
            hidden_size=14336,
            ffn_size=57344,
            num_heads=112,
            num_kv_heads=112,
            head_dim=128,
            vocab_size=250880,
            max_context=2048,
            source="bigscience/bloom config.json (ALiBi; 2048 training length)",
        ),
        ModelSpec(
            name="mixtral-8x7b",
            num_layers=32,
            hidden_size=4096,
            ffn_size=14336,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32000,
            max_context=32768,
            gated_mlp=True,
            num_experts=8,
            experts_per_token=2,
            linear_bias=False,
            tied_embeddings=False,
            rope_theta=1e6,
            source="mistralai/Mixtral-8x7B-v0.1 config.json",
        ),
    ]
}


def get_model(name: str) -> ModelSpec:
    key = name.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    close = difflib.get_close_matches(key, CATALOG, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise LiaInputError(
        "model",
        f"unknown model '{name}'",
        f"{hint}choose one of {', '.join(CATALOG)} or give a path to a Hugging Face config.json",
    )


# Model types whose Hugging Face config leaves the MLP width out because it is 4 x hidden by definition.
_FOUR_X_HIDDEN_TYPES = ("gpt2", "bloom", "falcon", "gpt_bigcode", "gptj")
_GATED_TYPES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "phi3",
    "olmo",
    "olmo2",
    "deepseek_v2",
    "deepseek_v3",
)


def _first(config: Mapping[str, Any], *keys: str) -> tuple[str, Any]:
    """(key, value) of the first key present with a non-null value, else (keys[0], None)."""
    for key in keys:
        if key in config and config[key] is not None:
            return key, config[key]
    return keys[0], None


def _whole(config: Mapping[str, Any], *keys: str, minimum: int = 1, example: int = 4096) -> "int | None":
    """An integer field (the first of ``keys`` present), at least ``minimum``; None when absent."""
    key, value = _first(config, *keys)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (
            isinstance(value, float)
            and (value != value or value in (float("inf"), float("-inf")) or not value.is_integer())
        )
    ):
        raise LiaInputError(
            f"config.json {key}", f"must be a whole number, got {value!r}"[:120], f'e.g. "{key}": {example}'
        )
    if value < minimum:
        raise LiaInputError(
            f"config.json {key}", f"must be at least {minimum}, got {value!r}", f'e.g. "{key}": {example}'
        )
    return int(value)


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise LiaInputError(
            f"config.json {key}", f"must be true or false, got {value!r}"[:120], f'e.g. "{key}": {str(default).lower()}'
        )
    return value


def model_from_hf_config(config: Mapping[str, Any], name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json dict (OPT, Llama, Mistral/Mixtral, Qwen, Bloom, ...).

    Every number is checked (a whole number of at least 1); nothing is guessed: a missing MLP width is an
    error unless the model type defines it as 4 x hidden, and what the cost model does not represent
    (multi-head latent attention, a quantisation method it does not know) is refused rather than ignored. The
    checkpoint's precision (``quantization_config``, ``torch_dtype``) becomes ``checkpoint_precision``. MoE: routed experts of
    moe_intermediate_size where given, and a shared expert (Qwen's, or DeepSeek's n_shared_experts).
    """
    if not isinstance(config, Mapping):
        raise LiaInputError("config.json", "the config is not a JSON object", 'e.g. {"hidden_size": 4096, ...}')
    model_type = config.get("model_type", "")
    model_type = model_type.lower() if isinstance(model_type, str) else ""
    hidden = _whole(config, "hidden_size", "n_embd", "d_model", example=4096)
    layers = _whole(config, "num_hidden_layers", "n_layer", "num_layers", example=32)
    heads = _whole(config, "num_attention_heads", "n_head", "num_heads", example=32)
    for key, value in (("hidden_size", hidden), ("num_hidden_layers", layers), ("num_attention_heads", heads)):
        if value is None:
            raise LiaInputError(
                f"config.json {key}",
                "missing from the config",
                'a decoder config needs e.g. {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32}',
            )
    precision = checkpoint_precision_from_hf_config(config)
    if _first(config, "kv_lora_rank", "q_lora_rank")[1] is not None or model_type in ("deepseek_v2", "deepseek_v3"):
        raise LiaInputError(
            "config.json kv_lora_rank",
            "multi-head latent attention (DeepSeek-V2/V3 style: a compressed KV "
            "cache of kv_lora_rank per token, decompressed per head) is not modelled",
            "use a model with standard multi-head or grouped-query attention; MLA's cache and FLOPs need their "
            "own accounting",
        )
    experts = _whole(config, "num_local_experts", "num_experts", "n_routed_experts", example=8) or 1
    per_token = _whole(config, "num_experts_per_tok", "num_experts_per_token", example=2)
    if experts > 1 and per_token is None:
        raise LiaInputError(
            "config.json num_experts_per_tok",
            f"missing for a model with {experts} experts",
            'e.g. "num_experts_per_tok": 2',
        )
    per_token = per_token or 1
    ffn = None
    if experts > 1:
        # Qwen-MoE and DeepSeek-MoE: routed experts are moe_intermediate_size wide (intermediate_size is the
        # dense MLP's width)
        ffn = _whole(config, "moe_intermediate_size", example=1408)
    if ffn is None:
        ffn = _whole(config, "intermediate_size", "ffn_dim", "n_inner", example=11008)
    if ffn is None:
        if model_type not in _FOUR_X_HIDDEN_TYPES:
            raise LiaInputError(
                "config.json intermediate_size",
                "missing: the MLP width is not in the config",
                'add it, e.g. "intermediate_size": 11008',
            )
        ffn = 4 * hidden
    shared = 0
    if experts > 1:
        # Qwen's shared expert is shared_expert_intermediate_size wide; DeepSeek's n_shared_experts experts of
        # moe_intermediate_size act as one MLP of their summed width
        shared = _whole(config, "shared_expert_intermediate_size", minimum=0, example=5632) or (
            (_whole(config, "n_shared_experts", minimum=0, example=2) or 0) * ffn
        )
    kv_heads = _whole(config, "num_key_value_heads", "num_kv_heads", example=8)
    kv_heads = heads if kv_heads is None else kv_heads
    head_dim = _whole(config, "head_dim", example=128)
    if head_dim is None:
        if hidden % heads:
            raise LiaInputError(
                "config.json num_attention_heads",
                f"{heads} heads do not divide hidden_size {hidden}",
                'give "head_dim" too, or a head count that divides hidden_size',
            )
        head_dim = hidden // heads
    vocab = _whole(config, "vocab_size", example=32000)
    if vocab is None:
        raise LiaInputError("config.json vocab_size", "missing from the config", 'e.g. "vocab_size": 32000')
    max_ctx = _whole(
        config, "max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", example=4096
    )
    if max_ctx is None:
        raise LiaInputError(
            "config.json max_position_embeddings",
            "missing: the context limit is not in the config",
            'add it, e.g. "max_position_embeddings": 4096',
        )
    act = config.get("hidden_act", config.get("activation_function", ""))
    gated = model_type in _GATED_TYPES or (
        isinstance(act, str) and act.lower() in ("silu", "swiglu") and model_type not in ("opt", "bloom", "gpt2")
    )
    bias = _flag(config, "attention_bias", model_type in ("opt", "bloom", "gpt2", "gpt_neox", "falcon"))
    learned = max_ctx + 2 if model_type == "opt" else (max_ctx if model_type == "gpt2" else 0)
    try:
        return ModelSpec(
            name=name,
            num_layers=layers,
            hidden_size=hidden,
            ffn_size=ffn,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            max_context=max_ctx,
            gated_mlp=bool(gated),
            num_experts=experts,
            experts_per_token=per_token,
            shared_ffn_size=shared,
            linear_bias=bias,
            learned_positions=learned,
            tied_embeddings=_flag(config, "tie_word_embeddings", True),
            checkpoint_precision=precision,
            source=f"Hugging Face config.json (model_type {model_type or 'unknown'})",
        )
    except ValueError as err:  # pydantic.ValidationError subclasses ValueError
        from pydantic import ValidationError

        from lia_model.errors import from_validation_error

        if isinstance(err, ValidationError):
            raise from_validation_error(err, "config.json", ModelSpec) from None
        raise


_FLOAT_DTYPES = ("bfloat16", "float16", "float32", "bf16", "fp16", "fp32", "half", "float")
_FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3", "fp8", "fp8_e4m3")
_QUANT_FIX = (
    'give AWQ / GPTQ with "bits": 4 or 8 and "group_size", "quant_method": "fp8", bitsandbytes, or '
    "compressed-tensors; or remove quantization_config and pass --weight-dtype"
)


def _quant_int(qc: Mapping[str, Any], *keys: str, example: int) -> "int | None":
    key, value = _first(qc, *keys)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LiaInputError(
            f"config.json quantization_config.{key}",
            f"must be a whole number, got {value!r}"[:120],
            f'e.g. "{key}": {example}',
        )
    return value


def _int_weights(bits: "int | None", group: "int | None", where: str) -> Precision:
    """AWQ / GPTQ / compressed-tensors integer weights: 4 or 8 bits; group_size -1 (or absent for 8 bits) is
    one group per output channel."""
    from lia_model.precision import DEFAULT_INT4_GROUP_SIZE, WeightDtype

    if bits not in (4, 8):
        raise LiaInputError(
            f"config.json quantization_config.{where}",
            f"{bits}-bit weights are not modelled (int4 and int8 are)",
            _QUANT_FIX,
        )
    if group is not None and group != -1 and group < 1:
        raise LiaInputError(
            "config.json quantization_config.group_size",
            f"must be -1 (per channel) or at least 1, got {group}",
            '"group_size": 128',
        )
    per_channel = group is None or group == -1
    if bits == 4:
        return Precision(
            weight_dtype=WeightDtype.INT4,
            weight_group_size=(DEFAULT_INT4_GROUP_SIZE if group is None else None) if per_channel else group,
        )
    return Precision(weight_dtype=WeightDtype.INT8, weight_group_size=None if per_channel else group)


def checkpoint_precision_from_hf_config(config: Mapping[str, Any]) -> Optional[Precision]:
    """How a checkpoint stores its weights (and KV cache, where the config says), from ``quantization_config``
    and ``torch_dtype`` (``dtype`` in newer transformers). None: bf16 (bfloat16, float16: 2 bytes; float32
    checkpoints are served in bf16).

      awq                      bits (w_bit) 4 -> int4, 8 -> int8, group_size (q_group_size; default 128)
      gptq                     bits 4 / 8, group_size (-1: per output channel; default 128)
      fp8                      fp8_e4m3 weights (weight_block_size [a, b] -> groups of a x b: one scale per block)
      bitsandbytes             load_in_8bit -> int8 per channel; load_in_4bit -> int4 in blocks of 64 (NF4)
      compressed-tensors       the first config group's weights (num_bits, type int/float, group_size) and
                               kv_cache_scheme (8-bit float -> fp8 KV, int -> int8 KV)
    """
    from lia_model.precision import KvDtype, WeightDtype

    qc = config.get("quantization_config")
    if qc is None:
        key, dtype = _first(config, "torch_dtype", "dtype")
        if dtype is None:
            return None
        if not isinstance(dtype, str):
            raise LiaInputError(
                f"config.json {key}", f"must be a dtype name, got {dtype!r}"[:120], f'e.g. "{key}": "bfloat16"'
            )
        text = dtype.strip().lower().removeprefix("torch.")
        if text in _FP8_DTYPES:
            return Precision(weight_dtype=WeightDtype.FP8_E4M3)
        if text in _FLOAT_DTYPES:
            return None
        raise LiaInputError(
            f"config.json {key}",
            f"dtype '{dtype}' is not modelled"[:160],
            'use "bfloat16", "float16", "float32" or "float8_e4m3fn", or add a quantization_config',
        )
    if not isinstance(qc, Mapping):
        raise LiaInputError(
            "config.json quantization_config",
            f"must be an object, got {qc!r}"[:120],
            '"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}',
        )
    method = qc.get("quant_method")
    method = method.strip().lower() if isinstance(method, str) else None
    if method == "awq":
        group = _quant_int(qc, "group_size", "q_group_size", example=128)
        return _int_weights(_quant_int(qc, "bits", "w_bit", example=4), 128 if group is None else group, "bits")
    if method == "gptq":  # AutoGPTQ's default group is 128
        group = _quant_int(qc, "group_size", example=128)
        return _int_weights(_quant_int(qc, "bits", example=4), 128 if group is None else group, "bits")
    if method == "fp8":
        block = qc.get("weight_block_size")
        group = None
        if block is not None:
            if (
                not isinstance(block, (list, tuple))
                or len(block) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)
            ):
                raise LiaInputError(
                    "config.json quantization_config.weight_block_size",
                    f"must be two whole numbers, got {block!r}"[:120],
                    '"weight_block_size": [128, 128]',
                )
            group = block[0] * block[1]
        return Precision(weight_dtype=WeightDtype.FP8_E4M3, weight_group_size=group)
    if method == "bitsandbytes":
        if qc.get("load_in_8bit") is True:
            return Precision(weight_dtype=WeightDtype.INT8)
        if qc.get("load_in_4bit") is True:
            return Precision(weight_dtype=WeightDtype.INT4, weight_group_size=64)
        raise LiaInputError(
            "config.json quantization_config.load_in_4bit",
            "bitsandbytes config loads neither 4 nor 8 bit weights",
            '"load_in_4bit": true or "load_in_8bit": true',
        )
    if method == "compressed-tensors":
        groups = qc.get("config_groups")
        first = next(iter(groups.values()), None) if isinstance(groups, Mapping) and groups else None
        weights = first.get("weights") if isinstance(first, Mapping) else None
        if not isinstance(weights, Mapping):
            raise LiaInputError(
                "config.json quantization_config.config_groups",
                "no group with a weights scheme",
                '{"group_0": {"weights": {"num_bits": 8, "type": "float"}}}',
            )
        bits = _quant_int(weights, "num_bits", example=8)
        kind = weights.get("type")
        group = _quant_int(weights, "group_size", example=128)
        if kind == "float" and bits == 8:
            precision = Precision(weight_dtype=WeightDtype.FP8_E4M3, weight_group_size=group)
        elif kind == "int":
            precision = _int_weights(bits, -1 if group is None else group, "config_groups.weights.num_bits")
        else:
            raise LiaInputError(
                "config.json quantization_config.config_groups.weights",
                f"{bits}-bit {kind!r} weights are not modelled"[:120],
                _QUANT_FIX,
            )
        kv = qc.get("kv_cache_scheme")
        if isinstance(kv, Mapping) and kv.get("num_bits") == 8:
            precision = precision.model_copy(
                update={"kv_dtype": KvDtype.FP8 if kv.get("type") == "float" else KvDtype.INT8}
            )
        return precision
    raise LiaInputError(
        "config.json quantization_config.quant_method",
        f"quantisation method {qc.get('quant_method')!r} is not modelled"[:160],
        _QUANT_FIX,
    )
