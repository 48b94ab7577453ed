"""Presenting predictions: JSON-ready dicts and rich tables (used by the CLI, studies and validation)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lia_model.costmodel import Prediction
from lia_model.plan import Device, policy_in_words, policy_notation


def plan_json(plan) -> dict[str, Any]:
    return plan.model_dump(mode="json")


def prediction_json(pred: Prediction, breakdown: bool = True) -> dict[str, Any]:
    """The stable JSON form of a prediction (documented in README, 'JSON output')."""
    out: dict[str, Any] = {
        "system": pred.system,
        "model": pred.model,
        "workload": pred.workload.model_dump(),
        "mode": pred.mode.value,
        "plan": plan_json(pred.plan),
        "plan_in_words": {
            "prefill": f"{policy_notation(pred.plan.prefill_policy)} {policy_in_words(pred.plan.prefill_policy)}",
            "decode": f"{policy_notation(pred.plan.decode_policy)} {policy_in_words(pred.plan.decode_policy)}",
        },
        **pred.summary(),
        "tpot_s": list(pred.tpot_s),
    }
    if breakdown:
        out["breakdown"] = [
            {
                "stage": r.stage.value,
                "layer_kind": r.layer_kind,
                "layers": r.layers,
                "sublayer": r.sublayer,
                "device": r.device.name.lower(),
                "compute_s": r.compute_s,
                "memory_s": r.memory_s,
                "pcie_s": r.pcie_s,
                "bound": r.bound,
            }
            for r in pred.breakdown
        ]
    return out


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def headline_row(pred: Prediction) -> list[str]:
    mem = " ".join(f"{t.value.upper()} {u.required_gb:.0f}/{u.available_gb:.0f}" for t, u in pred.memory.items())
    return [
        fmt_s(pred.ttft_s),
        fmt_s(pred.tpot_mean_s),
        fmt_s(pred.latency_s),
        f"{pred.throughput_tokens_per_s:.2f}",
        mem,
        " / ".join(f"{b}" for b in pred.bound_resource.values()),
        "yes"
        if pred.feasible
        else "NO: " + ", ".join(f"{s.tier.value.upper()} short {s.shortfall_gb:.1f} GB" for s in pred.shortfalls),
    ]


HEADLINE_COLUMNS = [
    "TTFT",
    "TPOT (mean)",
    "latency",
    "tokens/s",
    "memory GB used/avail",
    "bound (prefill / decode)",
    "fits",
]


def prediction_table(console: Console, pred: Prediction, title: str = "") -> None:
    console.print(f"[bold]{title}[/bold]")
    console.print(pred.plan.describe())
    head = Table(show_header=True)
    for col in HEADLINE_COLUMNS:
        head.add_column(col)
    head.add_row(*headline_row(pred))
    console.print(head)
    table = Table(title="per-sublayer breakdown, one layer of each kind (decode: mean over steps)")
    for col in ("stage", "layers", "sublayer", "device", "compute", "of which memory", "PCIe", "bound"):
        table.add_column(col)
    for r in pred.breakdown:
        table.add_row(
            r.stage.value,
            f"{r.layer_kind} x{r.layers}",
            r.sublayer,
            "CPU" if r.device == Device.CPU else "GPU",
            fmt_s(r.compute_s),
            fmt_s(r.memory_s),
            fmt_s(r.pcie_s),
            r.bound,
        )
    console.print(table)


# ---------------------------------------------------------------- ranked purchase tables (lia compare --rank)

RANKS = ("cost_per_mtok", "tokens_per_s", "latency")
# rank -> (column, True when larger is better)
RANK_KEYS = {
    "cost_per_mtok": ("usd_per_million_tokens", False),
    "tokens_per_s": ("throughput_tokens_per_s", True),
    "latency": ("latency_s", False),
}
RANKED_COLUMNS = (
    "rank",
    "model",
    "machine",
    "execution",
    "batch",
    "batch_gap_bound",
    "prefill_policy",
    "decode_policy",
    "gpu_resident_layers",
    "ttft_s",
    "tpot_mean_s",
    "latency_s",
    "throughput_tokens_per_s",
    "power_w",
    "capex_usd",
    "cost_per_hour_usd",
    "usd_per_million_tokens",
    "qualifies",
    "why_not",
)


def rank_rows(rows: list[dict[str, Any]], rank: str) -> list[dict[str, Any]]:
    """Rows sorted per model, the winner first: rows that qualify (a plan fits and meets every bound) by the
    rank's column (ascending cost per million tokens or latency, descending tokens/s), then the others in the
    order given. Each row gets "rank" (1, 2, ... within its model; None when it does not qualify). Models
    keep the order in which they first appear."""
    column, larger_better = RANK_KEYS[rank]
    models: list[str] = []
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
    out = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        good = [r for r in mine if r["qualifies"] and r.get(column) is not None]
        bad = [r for r in mine if r not in good]
        good.sort(key=lambda r: -r[column] if larger_better else r[column])  # stable: ties keep input order
        out += [{**r, "rank": k + 1} for k, r in enumerate(good)] + [{**r, "rank": None} for r in bad]
    return out
