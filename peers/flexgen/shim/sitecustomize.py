"""Caps this Python process's GPU memory, to emulate a smaller GPU for FlexGen (which has no cap of its own).

Python imports ``sitecustomize`` at start-up from PYTHONPATH; peers/flexgen/run_host.sh puts this folder there
only for the FlexGen runs. With FLEXGEN_GPU_CAP_GIB set, the CUDA caching allocator of device 0 may hold at
most that many GiB (torch.cuda.set_per_process_memory_fraction); allocations past it fail with an
out-of-memory error, as on a GPU of that size. Without the variable it does nothing.
"""

import os

_cap = os.environ.get("FLEXGEN_GPU_CAP_GIB")
if _cap:
    import torch

    if torch.cuda.is_available():
        _total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(_cap) * 2**30 / _total), 0)
        print(f"sitecustomize: GPU 0 capped at {float(_cap):g} GiB of {_total / 2**30:.1f} GiB", flush=True)
