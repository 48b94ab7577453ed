"""What a plan must move, derived from the plan alone, and a check of a run's records against it.

For every pass, layer and prefill chunk the plan fixes where each sublayer runs; from that follow exactly
the copies the executor must make (docs/design.md section 3):

- ``act``: the value handed from sublayer j to j+1 when they sit on different devices, including fc2 of
  layer i-1 (or the embedding) to qkv of layer i: h, q, scores, ctx, h_mid, mid;
- ``resid``: a residual input that must reach the device of the sublayer adding it (h for out_proj,
  h_mid for fc2) when no ``act`` copy already brought it there;
- ``kv_writeback``: new K and V made by a GPU qkv of a streamed layer, into the host cache;
- ``kv_fetch``: host-cache positions a streamed layer's GPU attention reads (cached ones when the GPU qkv
  put the new ones on the GPU, all of them when a CPU qkv wrote them to the host);
  neither with ``plan.streamed_kv_on_gpu`` (the cache lives on the GPU);
- ``weights``: each GPU sublayer's weights of each streamed layer, once per pass, into alternating buffers;
- ``head``: the last hidden state to the LM head's device.

``check_run`` compares a run's copy records (kind, place and bytes) and compute records (device) with this
list and returns the differences; an empty list means the data flow was exactly the plan's.
"""

from __future__ import annotations

from collections import Counter

from lia_model.models import ModelSpec
from lia_model.plan import Device, Plan
from lia_model.sublayers import SUBLAYERS, Stage
from lia_model.workload import Workload
from runtime.executor import head_device
from runtime.graph import is_resident, layer_policy, plan_passes
from runtime.records import RunResult
from runtime.weights import layer_layout

QKV, SCORE, CTX, OUT, FC1, FC2 = SUBLAYERS
_BOUNDARY_VALUES = ("q", "scores", "ctx", "h_mid", "mid")  # value crossing boundary j = 0..4


def expected_records(
    plan: Plan, model: ModelSpec, workload: Workload, output_len: int, head_dev: Device
) -> tuple[Counter, Counter]:
    """(copies, computes): multisets of (stage, step, layer, chunk, name, detail, nbytes) and
    (stage, step, layer, chunk, sublayer, device)."""
    copies: Counter = Counter()
    computes: Counter = Counter()
    B, L_in = workload.batch, workload.input_len
    h, f, qd, kvh, d = model.hidden_size, model.ffn_size, model.q_dim, model.num_kv_heads, model.head_dim
    g = model.num_heads // kvh
    layout = layer_layout(model, workload.precision.weight_dtype)  # the stored bytes a weight copy moves
    for node in plan_passes(plan, B, L_in, output_len):
        stage, step, q, pos0, valid = node.stage, node.step, node.q, node.pos0, node.valid
        n, b = len(node.chunks), node.chunk_rows
        for li in range(model.num_layers):
            resident = is_resident(plan, li)
            pol = layer_policy(plan, stage, li)
            dev = dict(zip(SUBLAYERS, pol))
            if li == 0:
                src_h = head_dev
            else:
                src_h = layer_policy(plan, stage, li - 1)[SUBLAYERS.index(FC2)]
            if not resident:
                for sub in (QKV, OUT, FC1, FC2):
                    if dev[sub] == Device.GPU:
                        copies[(stage, step, li, -1, "weights", sub.value, layout.regions[sub].numel * 2)] += 1
            for c in range(n):
                for sub in SUBLAYERS:
                    computes[(stage, step, li, c, sub.value, dev[sub])] += 1
                sizes = {
                    "h": b * q * h,
                    "q": b * q * qd,
                    "ctx": b * q * qd,
                    "h_mid": b * q * h,
                    "mid": b * q * f,
                    "scores": b * kvh * g * q * valid,
                }
                if dev[QKV] != src_h:
                    copies[(stage, step, li, c, "act", "h", 2 * sizes["h"])] += 1
                for j, name in enumerate(_BOUNDARY_VALUES):
                    if pol[j] != pol[j + 1]:
                        copies[(stage, step, li, c, "act", name, 2 * sizes[name])] += 1
                if dev[OUT] != src_h and dev[QKV] == src_h:
                    copies[(stage, step, li, c, "resid", "h", 2 * sizes["h"])] += 1
                if dev[FC2] != dev[OUT] and dev[FC1] == dev[OUT]:
                    copies[(stage, step, li, c, "resid", "h_mid", 2 * sizes["h_mid"])] += 1
                if resident or plan.streamed_kv_on_gpu:
                    continue
                if dev[QKV] == Device.GPU:
                    copies[(stage, step, li, c, "kv_writeback", "k,v", 2 * 2 * b * kvh * q * d)] += 1
                hi = pos0 if dev[QKV] == Device.GPU else valid
                for which, sub in (("k", SCORE), ("v", CTX)):
                    if dev[sub] == Device.GPU and hi > 0:
                        copies[(stage, step, li, c, "kv_fetch", which, 2 * b * kvh * hi * d)] += 1
        if layer_policy(plan, stage, model.num_layers - 1)[SUBLAYERS.index(FC2)] != head_dev:
            for c in range(n):
                copies[(stage, step, -1, c, "head", "last hidden", 2 * b * h)] += 1
    return copies, computes


def check_run(
    result: RunResult, plan: Plan, model: ModelSpec, workload: Workload, head_dev: Device, check_computes: bool = True
) -> list[str]:
    """Differences between a run's records and the plan's data flow (empty when they agree). ``head_dev``:
    GPU when the machine has one (the head then sits on the GPU unless the plan uses no GPU at all)."""
    head_dev = head_device(plan, model.num_layers, head_dev == Device.GPU)  # an all-CPU plan keeps the head on the CPU
    want_copies, want_computes = expected_records(plan, model, workload, result.output_len, head_dev)
    got_copies: Counter = Counter()
    got_computes: Counter = Counter()
    slots: list[tuple[tuple, int]] = []
    for r in result.records:
        if r.kind == "copy":
            chunk = -1 if r.name == "weights" else r.chunk
            got_copies[(r.stage, r.step, r.layer, chunk, r.name, r.detail, r.nbytes)] += 1
            if r.name == "weights":
                slots.append(((r.stage, r.step, r.layer), r.chunk))
        elif r.layer >= 0:
            got_computes[(r.stage, r.step, r.layer, r.chunk, r.name, r.device)] += 1
    problems = []
    for key, n in (want_copies - got_copies).items():
        problems.append(f"missing copy {_fmt(key)} x{n}")
    for key, n in (got_copies - want_copies).items():
        problems.append(f"unexpected copy {_fmt(key)} x{n}")
    if check_computes:
        for key, n in (want_computes - got_computes).items():
            problems.append(f"missing compute {_fmt(key)} x{n}")
        for key, n in (got_computes - want_computes).items():
            problems.append(f"unexpected compute {_fmt(key)} x{n}")
    # Weight buffers alternate over consecutive streamed-layer executions (all sublayers of one layer share one).
    per_layer: dict[tuple, set[int]] = {}
    order: list[tuple] = []
    for key, slot in slots:
        if key not in per_layer:
            per_layer[key] = set()
            order.append(key)
        per_layer[key].add(slot)
    for key in order:
        if len(per_layer[key]) != 1:
            problems.append(f"layer {_fmt(key)} weights split over buffers {sorted(per_layer[key])}")
    streamed = model.num_layers - plan.gpu_resident_layers
    stage_order = {Stage.PREFILL: 0, Stage.DECODE: 1}
    order.sort(key=lambda k: (stage_order[k[0]], k[1], k[2]))
    if any(d == Device.GPU for p in (plan.prefill_policy, plan.decode_policy) for d in p) and streamed:
        index = 0
        for node in plan_passes(plan, workload.batch, workload.input_len, result.output_len):
            for li in range(plan.gpu_resident_layers, model.num_layers):
                key = (node.stage, node.step, li)
                if key in per_layer:
                    want = index % 2
                    if per_layer[key] != {want}:
                        problems.append(f"layer {_fmt(key)} used buffer {sorted(per_layer[key])}, expected {want}")
                index += 1
    return problems


def _fmt(key: tuple) -> str:
    return "(" + ", ".join(getattr(k, "value", str(k)) if not isinstance(k, int) else str(k) for k in key) + ")"
