"""Unit constants. SI prefixes everywhere: GB = 1e9 bytes, GiB = 2**30 bytes, TFLOPS = 1e12 FLOP/s.

Field names carry their unit (``_gbps`` is GB/s, ``_gib`` is GiB, ``_tflops`` is 1e12 FLOP/s, ``_us`` is
microseconds, ``_s`` is seconds); this module is the one place the multipliers live.
"""

from __future__ import annotations

BYTES_PER_GB = 1e9
BYTES_PER_GIB = float(2**30)
FLOPS_PER_TFLOPS = 1e12
BYTES_PER_S_PER_GBPS = 1e9
S_PER_US = 1e-6
BF16_BYTES = 2

ELEMS_PER_GELEMS = 1e9
