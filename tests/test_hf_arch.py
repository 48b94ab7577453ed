"""Published config.json files map to the catalog's shapes and numerics (pure; no weights, no torch)."""

from __future__ import annotations

import pytest

from lia_model.errors import LiaInputError
from lia_model.hf_arch import numerics_from_hf_config, runtime_model
from lia_model.models import CATALOG, RopeScaling

# The published config.json of each model (hub repositories named in the catalog's source fields), verbatim
# except for fields no loader reads (dropouts, dtype, versions).
LLAMA_31_70B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 8192,
    "initializer_range": 0.02,
    "intermediate_size": 28672,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
}
LLAMA_2_70B = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 8192,
    "initializer_range": 0.02,
    "intermediate_size": 28672,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
}
OPT_30B = {
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "eos_token_id": 2,
    "ffn_dim": 28672,
    "hidden_size": 7168,
    "init_std": 0.02,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 56,
    "num_hidden_layers": 48,
    "pad_token_id": 1,
    "vocab_size": 50272,
    "word_embed_proj_dim": 7168,
}


@pytest.mark.parametrize(
    "config,name", [(LLAMA_31_70B, "llama-3.1-70b"), (LLAMA_2_70B, "llama-2-70b"), (OPT_30B, "opt-30b")]
)
def test_published_configs_give_the_catalog_model(config, name):
    got = runtime_model(config, name)
    want = CATALOG[name]
    assert got.model_dump(exclude={"source"}) == want.model_dump(exclude={"source"})


def test_both_rope_formats_read_the_same():
    """transformers >= 5 writes rope_parameters (theta inside); older files rope_theta + rope_scaling, and the
    oldest linear scaling says "type" instead of "rope_type"."""
    v5 = {
        **LLAMA_2_70B,
        "rope_scaling": None,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    assert numerics_from_hf_config(v5) == numerics_from_hf_config(LLAMA_31_70B)
    old_linear = {**LLAMA_2_70B, "rope_scaling": {"type": "linear", "factor": 4.0}, "rope_theta": 1e6}
    assert numerics_from_hf_config(old_linear) == {
        "norm_eps": 1e-5,
        "rope_theta": 1e6,
        "rope_scaling": RopeScaling(rope_type="linear", factor=4.0),
    }
    # a Llama config without rms_norm_eps or rope_theta gets transformers' defaults
    bare = {k: v for k, v in LLAMA_2_70B.items() if k != "rms_norm_eps"}
    assert numerics_from_hf_config(bare)["norm_eps"] == 1e-6 and numerics_from_hf_config(bare)["rope_theta"] == 1e4


def test_a_broken_rope_scaling_is_a_clear_error():
    bad = {**LLAMA_31_70B, "rope_scaling": {**LLAMA_31_70B["rope_scaling"], "high_freq_factor": 0.5}}
    with pytest.raises(
        LiaInputError,
        match=r"config.json rope_scaling: rope_scaling.high_freq_factor \(0.5\) must "
        r"exceed low_freq_factor \(1.0\) -- e.g. \{",
    ):
        runtime_model(bad, "x")
    with pytest.raises(LiaInputError, match="config.json rope_scaling.factor: missing for rope_type linear"):
        runtime_model({**LLAMA_2_70B, "rope_scaling": {"rope_type": "linear"}}, "x")
    with pytest.raises(LiaInputError, match="config.json rope_scaling.factor: Input should be greater than 0"):
        runtime_model({**LLAMA_2_70B, "rope_scaling": {"rope_type": "linear", "factor": -1}}, "x")
