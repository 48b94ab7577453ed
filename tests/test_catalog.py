"""Published numbers: parameter counts, layer sizes and KV bytes of the catalogued models."""

import json

import pytest

from lia_model.accounting import kv_bytes_per_token, layer_weight_bytes, total_params
from lia_model.errors import LiaInputError
from lia_model.inputs import resolve_model
from lia_model.models import CATALOG, get_model, model_from_hf_config


def test_opt_175b_has_175e9_parameters_within_one_percent():
    assert total_params(get_model("opt-175b")) == pytest.approx(175e9, rel=0.01)


def test_one_opt_30b_layer_holds_1_23_gb_of_bf16_weights():
    # 12 h^2 + 13 h parameters with h = 7168, 2 bytes each: 1.2333 GB
    assert layer_weight_bytes(get_model("opt-30b")) / 1e9 == pytest.approx(1.23, abs=0.005)
    assert layer_weight_bytes(get_model("opt-30b")) == 2 * (12 * 7168**2 + 13 * 7168)


@pytest.mark.parametrize(
    "name, published",
    [
        ("opt-30b", 30e9),
        ("opt-66b", 66e9),
        ("llama-2-70b", 68.98e9),
        ("llama-3.1-70b", 70.55e9),
        ("bloom-176b", 176.2e9),
        ("mixtral-8x7b", 46.7e9),
    ],
)
def test_parameter_counts_match_published_sizes(name, published):
    assert total_params(get_model(name)) == pytest.approx(published, rel=0.01)


def test_kv_bytes_per_token_of_an_opt_model():
    # K and V, 7168 wide, bf16, 48 layers
    assert kv_bytes_per_token(get_model("opt-30b")) == 2 * 7168 * 2 * 48 == 1_376_256


def test_kv_bytes_per_token_of_a_gqa_model():
    # Llama-3.1-70B: 8 KV heads of 128 (1024 wide, not 8192), bf16, 80 layers
    assert kv_bytes_per_token(get_model("llama-3.1-70b")) == 2 * 1024 * 2 * 80 == 327_680


def test_hf_config_honours_head_dim_and_kv_heads(tmp_path):
    config = {
        "model_type": "llama",
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    m = resolve_model(str(path))
    assert (m.head_dim, m.num_kv_heads, m.kv_dim, m.q_dim) == (256, 8, 2048, 6144)
    assert m.gated_mlp and not m.linear_bias and m.max_context == 8192


def test_hf_config_of_opt_reproduces_the_catalog_entry():
    config = {
        "model_type": "opt",
        "hidden_size": 7168,
        "num_hidden_layers": 48,
        "num_attention_heads": 56,
        "ffn_dim": 28672,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "activation_function": "relu",
        "enable_bias": True,
    }
    m = model_from_hf_config(config, name="opt-30b")
    assert total_params(m) == total_params(CATALOG["opt-30b"])


def test_unknown_model_names_the_catalog():
    with pytest.raises(LiaInputError, match="unknown model 'opt-31b'.*did you mean 'opt-30b'"):
        get_model("opt-31b")
