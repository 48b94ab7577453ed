"""calibrate/gpu_chain.py (a layer's GPU linears timed chained, as the runtime runs them): the chain runs on the CPU
here (host stamps in place of CUDA events). --refit's chained entries and --gpu-linears-chained's errors are tested
beside the other GPU linear entries, in tests/test_kernel_tables_gpu_linears.py."""

from __future__ import annotations

import pytest

from lia_model.models import get_model

OPT30 = get_model("opt-30b")


def test_layer_bytes_and_blocks_by_hand() -> None:
    """OPT-30B (h = 7168, f = 28672, biases, LayerNorm with bias): qkv 7168 x 21504 + 21504 + 2 x 7168, out_proj
    7168^2 + 7168, fc1 7168 x 28672 + 28672 + 2 x 7168, fc2 28672 x 7168 + 7168 = 616,655,872 values, 2 bytes each:
    1,233,311,744 bytes, the sum of the four weight copies of one streamed layer in the runtime's trace on the GPU host
    (runtime/validation/gpu-chain-probe/insitu/traces.tgz: 308,353,024 + 102,774,784 + 411,127,808 + 411,056,128).
    One layer exceeds 4 x 200 MiB, so the blocks cycled are the floor of 2."""
    from calibrate.gpu_chain import blocks_to_stream, layer_bytes

    values = (
        (7168 * 21504 + 21504 + 2 * 7168) + (7168**2 + 7168) + (7168 * 28672 + 28672 + 2 * 7168) + (28672 * 7168 + 7168)
    )
    assert values == 616_655_872
    assert 2 * values == 308_353_024 + 102_774_784 + 411_127_808 + 411_056_128
    assert layer_bytes(OPT30) == 2 * values
    assert blocks_to_stream(OPT30) == 2


def test_the_chain_feeds_each_linear_its_producers_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """out_proj reads qkv's Q with the layer input as residual, fc1 reads out_proj's output, fc2 reads fc1's with
    out_proj's as residual, and the next pass's qkv reads this pass's fc2 output; the layer blocks alternate; each
    pass yields one time per sublayer."""
    import torch

    from calibrate import gpu_chain
    from runtime import kernels

    calls: list[tuple] = []
    real = {name: getattr(kernels, name) for name in ("qkv", "out_proj", "fc1", "fc2")}

    def spy(name):
        def call(*args, **kwargs):
            out = real[name](*args, **kwargs)
            calls.append((name, args, out))
            return out

        return call

    for name in real:
        monkeypatch.setattr(kernels, name, spy(name))
    model = get_model("opt-30b")
    small = model.model_copy(update={"hidden_size": 64, "ffn_size": 256, "num_heads": 4, "num_kv_heads": 4})
    blocks = gpu_chain.layer_blocks(small, 2, device="cpu")
    chain = gpu_chain.Chain(small, 3, blocks, device="cpu")
    first_h = chain.h
    times = chain.run_passes(3)
    assert {k: len(v) for k, v in times.items()} == {"qkv": 3, "out_proj": 3, "fc1": 3, "fc2": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert [c[0] for c in calls] == ["qkv", "out_proj", "fc1", "fc2"] * 3
    for i in range(3):
        qkv, out_proj, fc1, fc2 = calls[4 * i : 4 * i + 4]
        block = blocks[i % 2]
        assert qkv[1][1] is block[next(iter(block))]  # the pass's own block (qkv's parameters)
        assert qkv[1][0] is (first_h if i == 0 else calls[4 * i - 1][2])  # the layer input: the last fc2's output
        assert out_proj[1][0] is qkv[2][0] and out_proj[1][2] is qkv[1][0]  # Q, residual = the layer input
        assert fc1[1][0] is out_proj[2]
        assert fc2[1][0] is fc1[2] and fc2[1][2] is out_proj[2]
    assert blocks[0][next(iter(blocks[0]))]["w"].data_ptr() != blocks[1][next(iter(blocks[1]))]["w"].data_ptr()
    assert isinstance(chain.h, torch.Tensor) and chain.h is calls[-1][2]
