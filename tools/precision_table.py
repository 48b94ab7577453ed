"""`lia plan` at bf16, int8 and int4 (g128) weights for OPT-175B and Llama-3.1-70B on spr-a100 and gnr-h100:
the optimal plan and its speedup over bf16 (latency objective, B=1, 256 in, 32 out, overlap model).

    python tools/precision_table.py            # prints the table (about a minute on 2 cores)

Each row is `lia plan --model M --system S --weight-dtype W --solver enumerate` (the enumerator is exact, as the
ILP is); the speedup is the bf16 optimum's latency over this precision's optimum's latency.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lia_model.cli.plan import run_plan  # noqa: E402
from lia_model.query import Query  # noqa: E402

MODELS = ("opt-175b", "llama-3.1-70b")
SYSTEMS = ("spr-a100", "gnr-h100")
DTYPES = ("bf16", "int8", "int4")


def main() -> None:
    print(
        f"{'model':14} {'system':9} {'weights':7} {'prefill':13} {'decode':13} {'N_res':>5} {'TTFT s':>8} "
        f"{'TPOT ms':>8} {'latency s':>9} {'speedup':>8}"
    )
    for model in MODELS:
        for system in SYSTEMS:
            base = None
            for dtype in DTYPES:
                out = run_plan(Query(system=system, model=model, solver="enumerate", weight_dtype=dtype)).document
                opt = out["optimum"]
                base = base or opt["latency_s"]
                plan = opt["plan"]
                words = opt["plan_in_words"]
                print(
                    f"{model:14} {system:9} {dtype:7} {words['prefill'].split()[0]:13} "
                    f"{words['decode'].split()[0]:13} {plan['gpu_resident_layers']:5d} {opt['ttft_s']:8.2f} "
                    f"{opt['tpot_mean_s'] * 1e3:8.1f} {opt['latency_s']:9.2f} {base / opt['latency_s']:7.2f}x"
                )


if __name__ == "__main__":
    main()
