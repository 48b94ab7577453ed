"""FLOPs and bytes of every sublayer at one prefill and one decode shape, against hand arithmetic."""

import pytest

from lia_model.accounting import expected_experts_touched, sublayer_work
from lia_model.models import get_model
from lia_model.sublayers import Sublayer

H, F, HEADS, HD = 7168, 28672, 56, 128  # OPT-30B


def test_prefill_flops_opt_30b_b2_q128():
    w = sublayer_work(get_model("opt-30b"), batch=2, q=128, s=128)
    m = 2 * 128  # rows of every linear: B * q
    assert w[Sublayer.QKV].flops == 2 * m * H * (3 * H)
    assert float(w[Sublayer.ATTN_SCORE].flops) == 2 * 2 * HEADS * 128 * 128 * HD
    assert float(w[Sublayer.ATTN_CONTEXT].flops) == 2 * 2 * HEADS * 128 * 128 * HD
    assert w[Sublayer.OUT_PROJ].flops == 2 * m * H * H
    assert w[Sublayer.FC1].flops == 2 * m * H * F
    assert w[Sublayer.FC2].flops == 2 * m * F * H
    # literal values, computed by hand
    assert w[Sublayer.QKV].flops == 78_920_024_064
    assert float(w[Sublayer.ATTN_SCORE].flops) == 469_762_048


def test_decode_flops_and_kv_bytes_opt_30b_b8_s300():
    w = sublayer_work(get_model("opt-30b"), batch=8, q=1, s=300)
    assert w[Sublayer.FC1].flops == 2 * 8 * H * F == 3_288_334_336
    assert float(w[Sublayer.ATTN_SCORE].flops) == 2 * 8 * HEADS * 1 * 300 * HD == 34_406_400
    # the score reads all of K: B * s * h * 2 bytes; qkv writes one new K and V per sequence
    assert float(w[Sublayer.ATTN_SCORE].kv_read_bytes) == 8 * 300 * H * 2 == 34_406_400
    assert w[Sublayer.QKV].kv_write_bytes == 2 * 8 * H * 2


def test_gqa_qkv_and_attention_use_kv_heads():
    w = sublayer_work(get_model("llama-3.1-70b"), batch=1, q=1, s=1000)
    # q: 8192, k and v: 8 heads x 128 = 1024 each
    assert w[Sublayer.QKV].flops == 2 * 8192 * (8192 + 2 * 1024)
    assert float(w[Sublayer.ATTN_SCORE].kv_read_bytes) == 1000 * 1024 * 2
    # gated MLP: fc1 holds gate and up
    assert w[Sublayer.FC1].flops == 2 * 8192 * 28672 * 2


def test_moe_counts_routed_expert_flops_and_all_expert_weights():
    m = get_model("mixtral-8x7b")
    w = sublayer_work(m, batch=1, q=1, s=10)
    # 2 of 8 experts per token (gate+up), plus the router 4096 x 8
    assert w[Sublayer.FC1].flops == 2 * 4096 * 14336 * 2 * 2 + 2 * 4096 * 8
    assert w[Sublayer.FC2].weight_bytes == 8 * 14336 * 4096 * 2
    # one token touches 2 experts' weights; many tokens touch nearly all
    assert w[Sublayer.FC2].weight_bytes_read == pytest.approx(w[Sublayer.FC2].weight_bytes * 2 / 8)
    assert expected_experts_touched(m, 1) == pytest.approx(2.0)
    assert expected_experts_touched(m, 64) == pytest.approx(8.0, rel=1e-6)
