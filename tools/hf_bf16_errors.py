"""How far the runtime's logits are from transformers' on tiny random checkpoints, in float32 and bf16, and where bf16
greedy decoding departs from transformers' (the numbers behind the tolerances of tests/test_hf_models.py).

    python tools/hf_bf16_errors.py [--seeds 3]      # about 30 s on 2 cores

One row per (model, seed, dtype, placement): relative (whole tensor) and largest absolute logit error against
transformers' float32 logits, teacher-forced on transformers' tokens; the largest |logit|; how many of the 4
free-running greedy sequences equal transformers' over 32 tokens; and transformers' top-2 margin at every position
where the teacher-forced argmax differs (a flip needs a margin below about twice the absolute error).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hf_tiny import BATCH, NEW_TOKENS, PROMPT_LEN, make_case  # noqa: E402

from lia_model.plan import ALL_CPU, ALL_GPU, ATTENTION_ON_CPU, Plan  # noqa: E402
from lia_model.workload import Workload  # noqa: E402
from runtime.backend import Backend  # noqa: E402
from runtime.executor import Executor  # noqa: E402
from runtime.hf_loader import load_checkpoint, open_checkpoint  # noqa: E402

PLACEMENTS = [
    ("all-cpu", "cpu", Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU)),
    (
        "flexgen-r1-n2",
        "fake",
        Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=1, prefill_minibatches=2),
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    workload = Workload(batch=BATCH, input_len=PROMPT_LEN, output_len=NEW_TOKENS)
    print("model    seed dtype    placement      rel_err   max_abs_err  max|logit|  seqs_equal  flip margins")
    flips = seqs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for kind in ("opt", "llama", "mistral"):
                case = make_case(kind, Path(tmp) / f"{kind}-{seed}", seed)
                ckpt = open_checkpoint(case.path)
                top2 = case.logits.topk(2, -1).values
                margin = top2[..., 0] - top2[..., 1]
                for dtype in (torch.float32, torch.bfloat16):
                    for name, backend, plan in PLACEMENTS:
                        be = Backend(backend, dtype)
                        ex = Executor(be, load_checkpoint(ckpt, be), plan, workload)
                        free = ex.generate(case.prompt).tokens
                        forced = ex.generate(
                            case.prompt, keep_logits=True, select=lambda t, lg, c=case: c.tokens[:, t].to(lg.device)
                        )
                        lg = torch.stack(forced.logits, 1)
                        rel = float(torch.linalg.vector_norm(lg - case.logits) / torch.linalg.vector_norm(case.logits))
                        equal = int((free == case.tokens).all(1).sum())
                        differ = margin[lg.argmax(-1) != case.tokens]
                        if name == "all-cpu":
                            flips += BATCH - equal
                            seqs += BATCH
                        print(
                            f"{kind:8s} {seed:4d} {str(dtype)[6:]:8s} {name:13s} {rel:9.2e} "
                            f"{float((lg - case.logits).abs().max()):12.2e} {float(case.logits.abs().max()):11.2f} "
                            f"{equal:6d} / {BATCH}  {' '.join(f'{m:.1e}' for m in differ.tolist()) or '-'}"
                        )
    print(f"sequences departing from transformers within 32 tokens (all-cpu, both dtypes): {flips} of {seqs}")


if __name__ == "__main__":
    main()
