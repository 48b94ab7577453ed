"""The roofline time of one operation: the one copy of the formula the cost terms, the microbenchmark and
tensor-parallel studies and the calibrator's fit share.

    t = max(FLOPs / rate, bytes / bandwidth) + overhead

``rate`` is the achieved FLOP/s (peak x efficiency at the product's rows), ``bandwidth`` bytes/s, all SI.
Scalars give a float; numpy arrays broadcast.
"""

from __future__ import annotations

from typing import Union

import numpy as np

Number = Union[float, np.ndarray]


def roofline_s(
    flops: Number, rate_flops_per_s: Number, nbytes: Number, bandwidth_bytes_per_s: Number, overhead_s: Number
) -> Number:
    compute_s = flops / rate_flops_per_s
    memory_s = nbytes / bandwidth_bytes_per_s
    if isinstance(compute_s, np.ndarray) or isinstance(memory_s, np.ndarray):
        return np.maximum(compute_s, memory_s) + overhead_s
    return max(compute_s, memory_s) + overhead_s
