"""Which Hugging Face checkpoints the runtime can execute, and the numerics it needs from their config (pure).

The runtime executes dense pre-norm decoder layers of two families (docs/design.md section 2):

- ``opt``: LayerNorm before attention and MLP, biases everywhere, ReLU MLP, learned positions (offset 2),
  tied LM head;
- ``llama`` / ``mistral`` (Llama-2, Llama-3/3.1, Mistral): RMSNorm, no biases, SiLU-gated MLP, rotary positions
  (base and scaling from the config), grouped-query attention, tied or separate LM head.

Anything else gets one error that names what the runtime lacks (mixture-of-experts MLPs, multi-head latent
attention, ALiBi, parallel attention/MLP blocks, ...). ``lia plan --model config.json`` still models such
checkpoints where the cost model can.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pydantic import ValidationError

from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec, RopeScaling, model_from_hf_config

RUNNABLE_TYPES = ("opt", "llama", "mistral")

# What a model type has that the runtime does not (for the error message of types outside RUNNABLE_TYPES).
_KNOWN_GAPS = {
    "bloom": "ALiBi attention biases and an embedding LayerNorm",
    "falcon": "parallel attention/MLP blocks (and ALiBi or multi-query variants)",
    "gpt_neox": "parallel attention/MLP blocks and partial rotary embeddings",
    "gptj": "parallel attention/MLP blocks and interleaved rotary embeddings",
    "gpt2": "Conv1D weights and GELU MLPs",
    "gemma": "(1 + w) RMSNorm weights, scaled embeddings and GELU-gated MLPs",
    "gemma2": "(1 + w) RMSNorm weights, logit soft-capping and sliding-window layers",
    "qwen2": "q/k/v biases without out_proj or MLP biases",
    "phi3": "fused qkv_proj / gate_up_proj weights",
    "deepseek_v2": "multi-head latent attention and mixture-of-experts MLPs",
    "deepseek_v3": "multi-head latent attention and mixture-of-experts MLPs",
}

_FIX = "run a dense OPT, Llama-2/3 or Mistral checkpoint; `lia plan --model PATH/config.json` still models this one"


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key)
    return default if value is None else value


def runtime_gaps(config: Mapping[str, Any]) -> list[str]:
    """What the runtime lacks to execute this checkpoint (empty when it can)."""
    mtype = str(config.get("model_type", "")).lower()
    gaps = []
    experts = max(int(_get(config, k, 1)) for k in ("num_local_experts", "num_experts", "n_routed_experts"))
    if experts > 1:
        per = _get(config, "num_experts_per_tok", _get(config, "num_experts_per_token", "?"))
        gaps.append(
            f"mixture-of-experts MLPs ({experts} experts, {per} per token; the runtime executes dense MLPs only)"
        )
    if config.get("kv_lora_rank") is not None or config.get("q_lora_rank") is not None:
        gaps.append(
            "multi-head latent attention (kv_lora_rank / q_lora_rank: the runtime has no latent KV projections)"
        )
    if config.get("quantization_config") is not None:
        gaps.append(
            "quantized weights (quantization_config; the runtime loads bf16 checkpoints, its int8 linears "
            "are runtime/kernels.py's own)"
        )
    if mtype not in RUNNABLE_TYPES:
        if not gaps:  # MoE / MLA above already say what is missing
            what = _KNOWN_GAPS.get(mtype)
            gaps.append(
                f"a weight mapping for model_type '{mtype or '(none)'}'"
                + (f" ({what})" if what else "")
                + f"; the runtime loads {', '.join(RUNNABLE_TYPES)}"
            )
        return gaps
    if mtype == "opt":
        act = str(_get(config, "activation_function", "relu")).lower()
        if act != "relu":
            gaps.append(f"activation_function '{act}' (the runtime's OPT MLP is ReLU)")
        if not _get(config, "do_layer_norm_before", True):
            gaps.append("post-LayerNorm layers (do_layer_norm_before false, as in opt-350m)")
        proj = config.get("word_embed_proj_dim")
        if proj is not None and int(proj) != int(_get(config, "hidden_size", proj)):
            gaps.append(
                f"project_in/project_out embedding projections (word_embed_proj_dim {proj} != hidden_size "
                f"{config.get('hidden_size')})"
            )
        if config.get("_remove_final_layer_norm"):
            gaps.append("no final LayerNorm (_remove_final_layer_norm)")
        if not _get(config, "enable_bias", True):
            gaps.append("OPT without linear biases (enable_bias false)")
        if not _get(config, "layer_norm_elementwise_affine", True):
            gaps.append("LayerNorms without weights (layer_norm_elementwise_affine false)")
        return gaps
    act = str(_get(config, "hidden_act", "silu")).lower()
    if act != "silu":
        gaps.append(f"hidden_act '{act}' (the runtime's gated MLP is SiLU)")
    if _get(config, "attention_bias", False) or _get(config, "mlp_bias", False):
        gaps.append("linear biases with RMSNorm (attention_bias / mlp_bias)")
    rope = _rope_parameters(config)
    kind = str(rope.get("rope_type", rope.get("type", "default")) or "default").lower()
    if kind not in ("default", "linear", "llama3"):
        gaps.append(f"RoPE scaling '{kind}' (the runtime applies none, linear or llama3)")
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        gaps.append(f"partial rotary embeddings (partial_rotary_factor {partial})")
    return gaps


def _rope_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE settings in either config format: transformers >= 5 writes ``rope_parameters`` (theta inside),
    published Llama-3.1 / Mistral configs write ``rope_theta`` and ``rope_scaling``."""
    params = dict(config.get("rope_parameters") or {})
    if not params:
        params = dict(config.get("rope_scaling") or {})
        if config.get("rope_theta") is not None:
            params["rope_theta"] = config["rope_theta"]
    return params


def numerics_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``norm_eps``, ``rope_theta`` and ``rope_scaling`` of a runnable config, as ModelSpec fields.

    OPT's LayerNorms use PyTorch's default epsilon 1e-5 (its config has no field for it). Llama and Mistral
    read ``rms_norm_eps``; when absent, transformers' default of 1e-6 applies, as it does for ``rope_theta``'s
    10000.
    """
    mtype = str(config.get("model_type", "")).lower()
    if mtype == "opt":
        return {"norm_eps": 1e-5}
    rope = _rope_parameters(config)
    kind = str(rope.get("rope_type", rope.get("type", "default")) or "default").lower()
    scaling: Optional[RopeScaling] = None
    example = (
        'e.g. {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, '
        '"original_max_position_embeddings": 8192}'
    )
    if kind in ("linear", "llama3"):
        fields = {
            k: rope[k]
            for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            if rope.get(k) is not None
        }
        if "factor" not in fields:
            raise LiaInputError("config.json rope_scaling.factor", f"missing for rope_type {kind}", example)
        if kind == "linear":
            fields = {"factor": fields["factor"]}
        try:
            scaling = RopeScaling(rope_type=kind, **fields)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise LiaInputError("config.json rope_scaling" + (f".{where}" if where else ""), msg, example) from None
    return {
        "norm_eps": float(_get(config, "rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", 10000.0)),
        "rope_scaling": scaling,
    }


def runtime_model(config: Mapping[str, Any], name: str) -> ModelSpec:
    """The ModelSpec the runtime executes for a checkpoint's config, numerics included; LiaInputError naming
    what is missing when the runtime cannot run it."""
    gaps = runtime_gaps(config)
    if gaps:
        mtype = config.get("model_type", "(none)")
        raise LiaInputError(
            "model", f"{name} (model_type '{mtype}') cannot run on the LIA runtime: it needs " + "; ".join(gaps), _FIX
        )
    spec = model_from_hf_config(config, name=name)
    # transformers ties OPT's LM head by default and Llama's / Mistral's not, when the config does not say.
    tied = bool(_get(config, "tie_word_embeddings", str(config.get("model_type")).lower() == "opt"))
    return spec.model_copy(update={**numerics_from_hf_config(config), "tied_embeddings": tied})


def sliding_window(config: Mapping[str, Any]) -> Optional[int]:
    """Attention window of Mistral-style checkpoints (None: full causal attention). The runtime attends to the
    whole context, which equals windowed attention while prompt + output stay within the window."""
    window = config.get("sliding_window")
    if window is None or config.get("use_sliding_window") is False:
        return None
    return int(window)
