"""Small hand-made specs with round numbers, so that expected values can be computed by hand."""

from __future__ import annotations

from lia_model.hardware import CpuSpec, GpuSpec, IsaSpec, LinkSpec, MemoryTierSpec, SystemSpec
from lia_model.models import ModelSpec
from lia_model.plan import HostTier

FLAT = [{"tokens": 1, "efficiency": 1.0}]
SRC = {"": "test"}


def toy_system(cxl: bool = False, **gpu_overrides) -> SystemSpec:
    """GPU 100 TFLOPS / 1000 GB/s, CPU 10 cores x 0.1 TFLOPS / 100 GB/s, link 10 GB/s, no overheads."""
    gpu = dict(
        name="toy-gpu",
        memory_gib=80,
        reserved_gib=0,
        hbm_gbps=1000,
        bf16_peak_tflops=100,
        matmul_efficiency=FLAT,
        attention_efficiency=FLAT,
        op_overhead_us=0,
        source={
            "memory_gib": "test",
            "reserved_gib": "test",
            "hbm_gbps": "test",
            "bf16_peak_tflops": "test",
            "matmul_efficiency": "test",
            "attention_efficiency": "test",
            "op_overhead_us": "test",
        },
    )
    gpu.update(gpu_overrides)
    isa = IsaSpec(present=True, per_core_tflops=0.1, matmul_efficiency=FLAT, attention_efficiency=FLAT)
    return SystemSpec(
        name="toy",
        cpu=CpuSpec(
            name="toy-cpu",
            cores=10,
            memory_read_gbps=100,
            op_overhead_us=0,
            isa={"amx_bf16": isa},
            source={"cores": "test", "memory_read_gbps": "test", "op_overhead_us": "test", "isa": "test"},
        ),
        gpu=GpuSpec(**gpu),
        link=LinkSpec(
            name="toy-link",
            h2d_gbps=10,
            d2h_gbps=10,
            pageable_h2d_gbps=5,
            pageable_d2h_gbps=5,
            transfer_latency_us=0,
            source={
                "h2d_gbps": "test",
                "d2h_gbps": "test",
                "pageable_h2d_gbps": "test",
                "pageable_d2h_gbps": "test",
                "transfer_latency_us": "test",
            },
        ),
        ddr=MemoryTierSpec(
            name="toy-ddr",
            tier=HostTier.DDR,
            capacity_gib=512,
            read_gbps=100,
            source={"capacity_gib": "test", "read_gbps": "test"},
        ),
        cxl=MemoryTierSpec(
            name="toy-cxl",
            tier=HostTier.CXL,
            capacity_gib=256,
            read_gbps=50,
            source={"capacity_gib": "test", "read_gbps": "test"},
        )
        if cxl
        else None,
        host_reserved_gib=0,
        memory_headroom_fraction=0.0,
        source={"host_reserved_gib": "test", "memory_headroom_fraction": "test"},
    )


def toy_model(num_layers: int = 2) -> ModelSpec:
    """h = 1024, f = 4096, 8 heads of 128, no biases (one norm vector per norm), vocab 1000."""
    return ModelSpec(
        name="toy",
        num_layers=num_layers,
        hidden_size=1024,
        ffn_size=4096,
        num_heads=8,
        num_kv_heads=8,
        head_dim=128,
        vocab_size=1000,
        max_context=64,
        linear_bias=False,
        learned_positions=0,
        tied_embeddings=True,
    )


def toy_decoder(
    name: str,
    *,
    layers: int,
    hidden: int,
    ffn: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    context: int,
    llama: bool = False,
) -> ModelSpec:
    """A decoder of the OPT family (learned positions, biases, tied embeddings) or, with ``llama``, of the Llama
    family (gated MLP, no biases, untied embeddings, RoPE), for runtime tests at chosen shapes."""
    family = (
        dict(gated_mlp=True, linear_bias=False, tied_embeddings=False) if llama else dict(learned_positions=context + 2)
    )
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        ffn_size=ffn,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_context=context,
        **family,
    )
