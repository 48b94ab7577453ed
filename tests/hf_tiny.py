"""Tiny random-initialised Hugging Face checkpoints made with transformers, and transformers' own outputs on them.

The models are saved with ``save_pretrained`` in small shards (so the index is exercised) and exercise what a
real checkpoint brings: OPT (biases, LayerNorm, learned positions with offset 2, tied head); Llama with GQA,
a non-default RoPE base and RMSNorm epsilon, Llama-3.1 ``llama3`` RoPE scaling whose three frequency bands all
occur at head_dim 16, and a separate LM head; Mistral with one KV head, linear RoPE scaling and a tied head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB = 256
PROMPT_LEN = 8
NEW_TOKENS = 32
BATCH = 4


def _config(kind: str):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        num_hidden_layers=3,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if kind == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=256, num_attention_heads=4, word_embed_proj_dim=64, **common)
    if kind == "llama":
        return tf.LlamaConfig(
            hidden_size=64,
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 50000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            **common,
        )
    if kind == "mistral":
        return tf.MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            sliding_window=None,
            rope_parameters={"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0},
            **common,
        )
    raise ValueError(kind)


@dataclass
class HfCase:
    kind: str
    path: Path
    prompt: torch.Tensor  # [BATCH, PROMPT_LEN]
    tokens: torch.Tensor  # [BATCH, NEW_TOKENS] transformers' greedy generate (float32)
    logits: torch.Tensor  # [BATCH, NEW_TOKENS, VOCAB] transformers' logits predicting those tokens (float32)


def make_case(kind: str, folder: Path, seed: int = 0) -> HfCase:
    """Build, save (sharded) and run a tiny model with transformers in float32."""
    import transformers as tf

    torch.manual_seed(seed)
    cls = {"opt": tf.OPTForCausalLM, "llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM}[kind]
    model = cls(_config(kind)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(folder, max_shard_size="200KB")
    prompt = torch.randint(0, VOCAB, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS, do_sample=False)
        tokens = out[:, PROMPT_LEN:]
        assert tokens.shape == (BATCH, NEW_TOKENS)
        logits = model(out[:, :-1]).logits[:, PROMPT_LEN - 1 :].float()
    return HfCase(kind, folder, prompt, tokens, logits)
