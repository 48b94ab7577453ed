"""The DGX-A100 node file of the cost study (studies/dgx_a100.yaml) and the tensor-parallel model.

The model itself is pure and lives in ``lia_model.tensor_parallel`` (one copy; ``lia compare --tp-node``
uses it too); the file is read by ``lia_model.inputs.load_tp_node``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lia_model.tensor_parallel import (  # noqa: F401  (re-exported)
    BATCH_CAP,
    TensorParallelNode,
    TensorParallelPrediction,
    available_per_gpu_bytes,
    best_at_batch,
    best_throughput,
    fits,
    head_time_s,
    layer_time_s,
    memory_per_gpu_bytes,
    predict_tp,
    shard,
)

NODE_FILE = Path(__file__).resolve().parent / "dgx_a100.yaml"


@lru_cache(maxsize=4)
def load_node(path: str = str(NODE_FILE)) -> TensorParallelNode:
    from lia_model.inputs import load_tp_node

    return load_tp_node(path)
