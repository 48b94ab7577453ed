"""`lia run` on real-shaped checkpoints (GPU host): tokens/s measured beside the prediction, tokens beside transformers.

    python -m runtime.hf_bench --work /tmp/lia-hf --out $OUT [--system hwprofiles/systems/emr-h100-calibrated.yaml]

For each model (catalog shapes truncated to a few layers, random weights) it makes a checkpoint with transformers'
``save_pretrained`` once (kept in --work, never in --out: they are several GB), then runs
``python -m lia_model run ... --json --warmup --ignore-eos`` for each point (batch, prompt length, objective,
GPU memory cap; the cap makes the optimiser stream layers as it would for the whole model) and writes:

- ``OUT/hf_bench.csv``: one row per point: plan, measured and predicted TTFT, TPOT, tokens/s, load time,
  and the agreement of `lia run`'s tokens with transformers' greedy choice on the same sequence (teacher-forced,
  bf16 on the GPU: the fraction of positions where transformers' argmax equals the token `lia run` produced);
- ``OUT/hf_bench/*.json`` and ``*.log``: each run's JSON and stderr (the progress bar and warnings).

Prompts are random token ids (the checkpoints have no tokenizer); everything is seeded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    # Shapes from the catalog's sources (lia_model/models.py); layers truncated.
    "llama-2-70b": dict(
        cls="LlamaForCausalLM",
        cfg="LlamaConfig",
        hidden_size=8192,
        intermediate_size=28672,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "llama-3.1-70b": dict(
        cls="LlamaForCausalLM",
        cfg="LlamaConfig",
        hidden_size=8192,
        intermediate_size=28672,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "opt-30b": dict(
        cls="OPTForCausalLM",
        cfg="OPTConfig",
        hidden_size=7168,
        ffn_dim=28672,
        num_attention_heads=56,
        vocab_size=50272,
        max_position_embeddings=2048,
        word_embed_proj_dim=7168,
    ),
}

# (model, batch, prompt length, new tokens, objective, GPU cap GiB or None)
POINTS = [
    ("llama-2-70b", 1, 256, 32, "latency", None),
    ("llama-2-70b", 1, 256, 32, "latency", 6.0),
    ("llama-2-70b", 32, 256, 32, "throughput", 6.0),
    ("opt-30b", 1, 256, 32, "latency", None),
    ("opt-30b", 16, 512, 32, "latency", 4.0),
    ("llama-3.1-70b", 8, 512, 32, "latency", 8.0),
]


def make_checkpoint(name: str, folder: Path, layers: int) -> float:
    """Random-initialised bf16 checkpoint written by save_pretrained; returns seconds (0 when it exists)."""
    if (folder / "config.json").exists():
        return 0.0
    import torch
    import transformers

    t0 = time.perf_counter()
    spec = dict(MODELS[name])
    cls, cfg = getattr(transformers, spec.pop("cls")), getattr(transformers, spec.pop("cfg"))
    config = cfg(num_hidden_layers=layers, bos_token_id=None, eos_token_id=None, pad_token_id=None, **spec)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = cls(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def teacher_forced_agreement(folder: Path, prompts: list[list[int]], outputs: list[list[int]]) -> float:
    """Fraction of generated positions where transformers (bf16, GPU) picks the token `lia run` produced."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    agree = total = 0
    with torch.no_grad():
        for p, o in zip(prompts, outputs, strict=True):
            seq = torch.tensor([p + o[:-1]], device=device)
            logits = model(seq).logits[0, len(p) - 1 :]
            agree += int((logits.argmax(-1).cpu() == torch.tensor(o)).sum())
            total += len(o)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return agree / total if total else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lia-hf"), help="Checkpoints go here (GBs).")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results/hf_bench")))
    ap.add_argument("--system", default="hwprofiles/systems/emr-h100-calibrated.yaml")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--models", default=",".join(MODELS), help="Comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--trace", action="store_true", help="Also write each point's Chrome traces (lia run --trace).")
    args = ap.parse_args(argv)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    logs = args.out / "hf_bench"
    logs.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, batch, l_in, l_out, objective, cap) in enumerate(POINTS):
        if name not in wanted:
            continue
        folder = args.work / f"{name}-{args.layers}l"
        made = make_checkpoint(name, folder, args.layers)
        if made:
            print(f"{folder}: written by save_pretrained in {made:.0f} s", flush=True)
        import random

        rng = random.Random(i)
        vocab = MODELS[name]["vocab_size"]
        prompts = [[rng.randrange(vocab) for _ in range(l_in)] for _ in range(batch)]
        prompt_file = logs / f"point{i}-prompts.txt"
        prompt_file.write_text("\n".join(" ".join(map(str, p)) for p in prompts) + "\n")
        cmd = [
            sys.executable,
            "-m",
            "lia_model",
            "run",
            "--model",
            str(folder),
            "--prompts",
            str(prompt_file),
            "--max-new-tokens",
            str(l_out),
            "--ids",
            "--objective",
            objective,
            "--system",
            args.system,
            "--warmup",
            "--ignore-eos",
            "--json",
        ]
        if cap is not None:
            cmd += ["--gpu-memory-gib", str(cap)]
        if args.trace:
            cmd += ["--trace", str(logs / f"point{i}-traces")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        tag = f"point{i}-{name}-B{batch}-L{l_in}-{objective}-cap{cap or 'none'}"
        (logs / f"{tag}.log").write_text(" ".join(cmd) + "\n\n" + proc.stderr)
        if proc.returncode != 0:
            print(f"{tag}: FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            rows.append({"point": tag, "status": f"failed: {proc.stderr.strip().splitlines()[-1:]}"})
            continue
        (logs / f"{tag}.json").write_text(proc.stdout)
        out = json.loads(proc.stdout)
        for b in out["batches"]:
            outputs = [o["token_ids"] for o in b["outputs"]]
            ins = [o["prompt_ids"] for o in b["outputs"]]
            agree = teacher_forced_agreement(folder, ins[:4], outputs[:4])
            m, p, plan = b["measured"], b["predicted"], b["plan"]
            rows.append(
                {
                    "point": tag,
                    "status": "ok",
                    "model": f"{name} ({args.layers} layers)",
                    "batch": b["workload"]["batch"],
                    "input_len": l_in,
                    "output_len": l_out,
                    "objective": objective,
                    "gpu_cap_gib": cap,
                    "prefill_policy": "".join(map(str, plan["prefill_policy"])),
                    "decode_policy": "".join(map(str, plan["decode_policy"])),
                    "resident_layers": plan["gpu_resident_layers"],
                    "minibatches": plan["prefill_minibatches"],
                    "ttft_meas_s": m["ttft_s"],
                    "ttft_pred_s": p["ttft_s"],
                    "tpot_meas_s": m["tpot_mean_s"],
                    "tpot_pred_s": p["tpot_mean_s"],
                    "tokens_per_s_meas": m["tokens_per_s"],
                    "tokens_per_s_pred": p["tokens_per_s"],
                    "load_s": out["load_s"],
                    "load_gb": out["load_gb"],
                    "wall_s": round(wall, 1),
                    "hf_argmax_agreement": agree,
                    "backend": out["backend"],
                    "system": out["system"],
                }
            )
            r = rows[-1]
            print(
                f"{tag}: plan {r['prefill_policy']}/{r['decode_policy']} R={r['resident_layers']} "
                f"n={r['minibatches']}; tokens/s {r['tokens_per_s_meas']:.2f} measured vs "
                f"{r['tokens_per_s_pred']:.2f} predicted; TTFT {r['ttft_meas_s']:.3f} / {r['ttft_pred_s']:.3f} s; "
                f"TPOT {r['tpot_meas_s']:.4f} / {r['tpot_pred_s']:.4f} s; load {r['load_gb']:.1f} GB in "
                f"{r['load_s']:.1f} s; transformers agrees on {100 * agree:.1f}% of tokens",
                flush=True,
            )
        with open(args.out / "hf_bench.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {args.out / 'hf_bench.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
