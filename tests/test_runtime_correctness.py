"""The executor computes the same function as a plain forward, for every placement, and moves exactly the
data its plan says (issue 5, correctness). CPU only: the "fake" backend stands the GPU in with separate CPU
allocations, so every crossing, KV write-back, fetch and weight-buffer swap is a real copy whose omission
changes the logits."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lia_model.accounting import layer_params
from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec, get_model
from lia_model.plan import ALL_CPU, ALL_GPU, ATTENTION_ON_CPU, Device, Plan, policy_from_index
from lia_model.workload import Workload
from runtime.backend import Backend
from runtime.dataflow import check_run
from runtime.executor import Executor, random_prompt
from runtime.hostmem import HostArena
from runtime.kvstore import KVStore
from runtime.reference import LOGITS_RTOL, check_against_reference
from runtime.weight_stream import WeightStreamer
from runtime.weights import ModelWeights, layer_layout
from tests.toys import toy_decoder

torch.set_num_threads(2)

TINY = dict(layers=3, hidden=64, heads=4, head_dim=16, vocab=128, context=64)
TINY_OPT = toy_decoder("tiny-opt", ffn=256, kv_heads=4, **TINY)
TINY_LLAMA = toy_decoder("tiny-llama", ffn=160, kv_heads=2, llama=True, **TINY)
WORKLOAD = Workload(batch=4, input_len=7, output_len=4)
CPU = torch.device("cpu")


def _weights(kind: str, model: ModelSpec, seed: int = 3) -> ModelWeights:
    backend = Backend(kind)
    arena = HostArena(
        backend,
        layer_layout(model).numel * model.num_layers,
        pinned=True,
        random_fill=True,
        seed=seed,
        fan_in=model.hidden_size,
    )
    return ModelWeights(model, arena, backend, seed=seed)


@pytest.fixture(scope="module")
def fake_opt() -> ModelWeights:
    return _weights("fake", TINY_OPT)


@pytest.fixture(scope="module")
def fake_llama() -> ModelWeights:
    return _weights("fake", TINY_LLAMA)


def _run(weights: ModelWeights, plan: Plan, workload: Workload = WORKLOAD):
    backend = Backend("fake") if weights.embeddings.dev == Device.GPU else Backend("cpu")
    ex = Executor(backend, weights, plan, workload)
    prompt = random_prompt(weights.model, workload, seed=1)
    result = ex.generate(prompt, keep_logits=True)
    check = check_against_reference(weights, prompt, result.tokens, result.logits, CPU)
    return result, check


def test_layout_matches_the_cost_models_parameter_count():
    for name in ("opt-30b", "opt-175b", "llama-2-70b"):
        m = get_model(name)
        assert layer_layout(m).numel == layer_params(m)
    # OPT-30B: 12 h^2 + 13 h + 4 h (biases, two LayerNorms) = 616.6 M parameters per layer
    h = 7168
    assert layer_layout(get_model("opt-30b")).numel == 12 * h * h + 9 * h + 4 * h


def test_moe_models_are_refused_with_a_clear_message():
    with pytest.raises(LiaInputError, match="mixture-of-experts"):
        layer_layout(get_model("mixtral-8x7b"))


@pytest.mark.parametrize("model", [TINY_OPT, TINY_LLAMA], ids=["opt", "llama-gqa"])
@pytest.mark.parametrize("minibatches,overlap,pinned", [(1, True, True), (2, True, True), (4, False, False)])
def test_all_cpu_plans_on_a_cpu_only_machine_match_the_reference(model, minibatches, overlap, pinned):
    weights = _weights("cpu", model)
    plan = Plan(
        prefill_policy=ALL_CPU,
        decode_policy=ALL_CPU,
        gpu_resident_layers=0,
        prefill_minibatches=minibatches,
        overlap=overlap,
        pinned_weights=pinned,
    )
    result, check = _run(weights, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(result, plan, model, WORKLOAD, Device.CPU) == []
    assert result.tokens.shape == (WORKLOAD.batch, WORKLOAD.output_len)
    assert result.latency_s == pytest.approx(result.ttft_s + sum(result.tpot_s))


def _policy_pairs() -> list[tuple[int, int]]:
    """Every prefill policy once, each with a different decode policy, plus a random sample of other pairs."""
    pairs = [(k, (k * 37 + 11) % 64) for k in range(64)]
    rng = random.Random(5)
    pairs += [(rng.randrange(64), rng.randrange(64)) for _ in range(24)]
    return pairs


@pytest.mark.parametrize("pair", _policy_pairs(), ids=lambda p: f"{p[0]:02d}-{p[1]:02d}")
def test_policy_pairs_match_the_reference_and_move_exactly_the_plans_data(pair, fake_opt):
    prefill, decode = pair
    plan = Plan(
        prefill_policy=policy_from_index(prefill),
        decode_policy=policy_from_index(decode),
        gpu_resident_layers=prefill % 2,
        prefill_minibatches=1 + decode % 2,
        overlap=bool(prefill % 3),
    )
    result, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL, plan.describe()
    assert check_run(result, plan, TINY_OPT, WORKLOAD, Device.GPU) == [], plan.describe()


@pytest.mark.parametrize(
    "prefill,decode,resident,n",
    [
        (ALL_GPU, ATTENTION_ON_CPU, 0, 2),  # FlexGen-like
        (ATTENTION_ON_CPU, ATTENTION_ON_CPU, 1, 1),
        (policy_from_index(0b100101), policy_from_index(0b011010), 0, 4),
        (ALL_CPU, ALL_GPU, 2, 2),
    ],
)
def test_gqa_model_with_rope_matches_under_mixed_placements(prefill, decode, resident, n, fake_llama):
    plan = Plan(prefill_policy=prefill, decode_policy=decode, gpu_resident_layers=resident, prefill_minibatches=n)
    result, check = _run(fake_llama, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(result, plan, TINY_LLAMA, WORKLOAD, Device.GPU) == []


@pytest.mark.slow  # 19 s on 2 cores (64 x 64 policy pairs); the default tier keeps the per-policy logits checks
def test_every_policy_pair_moves_the_plans_data_on_a_one_layer_model():
    """All 64 x 64 (prefill, decode) pairs, data flow only (one layer, one decode step: fast)."""
    model = TINY_OPT.model_copy(update={"num_layers": 1})
    weights = _weights("fake", model)
    workload = Workload(batch=2, input_len=3, output_len=2)
    backend = Backend("fake")
    prompt = random_prompt(model, workload)
    for a, b in itertools.product(range(64), range(64)):
        plan = Plan(
            prefill_policy=policy_from_index(a),
            decode_policy=policy_from_index(b),
            prefill_minibatches=2 if (a + b) % 2 else 1,
        )
        result = Executor(backend, weights, plan, workload).generate(prompt)
        assert check_run(result, plan, model, workload, Device.GPU) == [], (a, b)


# ---------------------------------------------------------------------------- the checks can fail


def test_a_missed_kv_write_back_is_caught(fake_opt, monkeypatch):
    """GPU qkv + CPU attention (FlexGen decode) reads the host cache: without the write-back it is stale."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU)
    good, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL

    def skip_write_back(self, lay, ch, dev, k, v):
        if lay.resident or dev == Device.CPU:
            return original(self, lay, ch, dev, k, v)
        if self.staging is not None:
            self.staging["k"][ch.rows, :, lay.pos0 : lay.valid].copy_(k)
            self.staging["v"][ch.rows, :, lay.pos0 : lay.valid].copy_(v)

    original = KVStore.write
    monkeypatch.setattr(KVStore, "write", skip_write_back)
    bad, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL
    assert any("kv_writeback" in p for p in check_run(bad, plan, TINY_OPT, WORKLOAD, Device.GPU))


@pytest.mark.parametrize("writeback", ["auto", "contiguous", "pitched"])
@pytest.mark.parametrize("early", ["1", "0"])
@pytest.mark.parametrize("minibatches", [1, 2])
def test_kv_write_back_modes_and_prefetch_timing_give_the_same_run(
    fake_opt, monkeypatch, writeback, early, minibatches
):
    # (LIA_LAZY_WEIGHT_WAIT follows LIA_EARLY_PREFETCH here: both runtime hand-off changes on, or both off)
    monkeypatch.setenv("LIA_LAZY_WEIGHT_WAIT", early)
    """A GPU qkv whose K/V CPU attention reads next lands them contiguous and the host scatters them (default), or
    writes them pitched (LIA_KV_WRITEBACK=pitched); the next-but-one layer's weights are queued at a layer's end
    (default) or at the next layer's begin (LIA_EARLY_PREFETCH=0); the compute stream waits for a layer's weights at
    its first GPU sublayer (default) or at its begin (LIA_LAZY_WEIGHT_WAIT=0). Every combination computes the reference's
    logits and moves exactly the plan's data; prefill puts score on the CPU and context on the GPU, so a K landed
    for CPU attention must be scattered before the GPU context fetches the cached V of the next step."""
    monkeypatch.setenv("LIA_KV_WRITEBACK", writeback)
    monkeypatch.setenv("LIA_EARLY_PREFETCH", early)
    plan = Plan(
        prefill_policy=policy_from_index(0b000010),  # attn_score on the CPU only
        decode_policy=ATTENTION_ON_CPU,
        prefill_minibatches=minibatches,
    )
    result, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(result, plan, TINY_OPT, WORKLOAD, Device.GPU) == []


@pytest.mark.parametrize("early", [True, False])
def test_the_next_but_one_layer_is_queued_at_a_layers_end(fake_opt, monkeypatch, early):
    """With LIA_EARLY_PREFETCH (default) layer i+2's weights are queued when layer i ends, before layer i+1 begins;
    without it, at layer i+1's begin. Either way each streamed layer of each pass is queued exactly once."""
    monkeypatch.setenv("LIA_EARLY_PREFETCH", "1" if early else "0")
    calls: list[tuple] = []
    prefetch, begin = WeightStreamer.prefetch, WeightStreamer.begin

    def log_prefetch(self, li, p_index, slot):
        calls.append(("queue", li, p_index))
        return prefetch(self, li, p_index, slot)

    def log_begin(self, lay):
        calls.append(("begin", lay.li, lay.pass_index))
        return begin(self, lay)

    monkeypatch.setattr(WeightStreamer, "prefetch", log_prefetch)
    monkeypatch.setattr(WeightStreamer, "begin", log_begin)
    _run(fake_opt, Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU))
    queued = [c[1:] for c in calls if c[0] == "queue"]
    begun = [c[1:] for c in calls if c[0] == "begin"]
    assert sorted(queued) == sorted(begun) and len(set(queued)) == len(queued)
    # the layer after next (begun[k + 2]) is queued before begun[k + 1] begins iff early
    for k in range(len(begun) - 2):
        queued_at = calls.index(("queue", *begun[k + 2]))
        assert (queued_at < calls.index(("begin", *begun[k + 1]))) == early


@pytest.mark.parametrize("lazy", [True, False])
def test_a_layer_waits_for_its_weights_at_its_first_gpu_sublayer(fake_opt, monkeypatch, lazy):
    """Llama-2-70B's decode optimum (1,0,0,0,0,1) starts each layer on the CPU. With LIA_LAZY_WEIGHT_WAIT (default)
    the compute stream waits for a streamed layer's weights right before its first GPU sublayer with weights, after
    the CPU qkv; with LIA_LAZY_WEIGHT_WAIT=0 at the layer's begin, before it. Either way before the layer's first
    GPU sublayer that reads weights."""
    from runtime.dispatch import SublayerDispatch

    monkeypatch.setenv("LIA_LAZY_WEIGHT_WAIT", "1" if lazy else "0")
    events: list[tuple] = []
    wait, run = WeightStreamer._wait_weights, SublayerDispatch.run_sublayer

    def log_wait(self, lay):
        if not lay.weights_waited:
            events.append(("wait", lay.li, lay.pass_index))
        return wait(self, lay)

    def log_run(self, lay, ch, sub, dev):
        events.append((sub.value, dev, lay.li, lay.pass_index))
        return run(self, lay, ch, sub, dev)

    monkeypatch.setattr(WeightStreamer, "_wait_weights", log_wait)
    monkeypatch.setattr(SublayerDispatch, "run_sublayer", log_run)
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=policy_from_index(0b100001))
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    decode_layers = {(e[2], e[3]) for e in events if e[0] == "qkv" and e[1] == Device.CPU}
    assert decode_layers
    for li, p_index in decode_layers:
        at = events.index(("wait", li, p_index))
        cpu_qkv = events.index(("qkv", Device.CPU, li, p_index))
        weighted = ("qkv", "out_proj", "fc1", "fc2")  # (GPU attention reads no weights and need not wait)
        first_gpu = min(i for i, e in enumerate(events) if e[1:] == (Device.GPU, li, p_index) and e[0] in weighted)
        # (a sublayer's event is logged as it starts; its weights are awaited inside it, before its kernels)
        assert at == first_gpu + 1 if lazy else at < cpu_qkv


@pytest.mark.parametrize("minibatches", [1, 2])
def test_wide_kv_rows_are_written_back_pitched_and_narrow_ones_land(fake_opt, monkeypatch, minibatches):
    """By default (LIA_KV_WRITEBACK unset) a GPU qkv whose K/V CPU attention reads next lands them contiguous for
    the host to scatter only where a pitched row (q positions x head_dim x 2 B) is narrower than
    PITCHED_FULL_RATE_ROW_BYTES; wider rows go pitched straight into the cache (no host scatter between the CPU
    sublayers, issue 10). With the threshold between the tiny model's prefill rows (7 x 16 x 2 = 224 B) and its
    decode rows (32 B), prefill writes pitched and decode lands; the logits and the data moved are the reference's."""
    import runtime.kvstore as kvstore

    monkeypatch.delenv("LIA_KV_WRITEBACK", raising=False)
    monkeypatch.setattr(kvstore, "PITCHED_FULL_RATE_ROW_BYTES", 224)
    assert kvstore.contiguous_writeback(32) and not kvstore.contiguous_writeback(224)
    landed: list[int] = []  # the q of each landing
    scattered: list[int] = []
    settle = KVStore.settle

    def log_settle(self, kv, b0, b1):
        scattered.extend(
            landing.shape[3] for key, (landing, lo, hi) in kv.landed.items() if key[0] < b1 and b0 < key[1]
        )
        return settle(self, kv, b0, b1)

    from runtime.pinned_pool import PinnedPool

    take = PinnedPool.take

    def log_take(self, role, shape, dtype=None):
        if role == "kv_landing":
            landed.append(shape[3])
        return take(self, role, shape, dtype)

    monkeypatch.setattr(KVStore, "settle", log_settle)
    monkeypatch.setattr(PinnedPool, "take", log_take)
    plan = Plan(prefill_policy=ATTENTION_ON_CPU, decode_policy=ATTENTION_ON_CPU, prefill_minibatches=minibatches)
    result, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(result, plan, TINY_OPT, WORKLOAD, Device.GPU) == []
    assert landed and set(landed) == {1} and set(scattered) == {1}  # decode landed and scattered, prefill never


def test_a_landed_kv_never_scattered_is_caught(fake_opt, monkeypatch):
    """The contiguous landing is only half of the write-back: without the host scatter the cache is stale."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU)
    monkeypatch.setattr(KVStore, "settle", lambda self, kv, b0, b1: kv.landed.clear())
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL


def test_streaming_the_wrong_layers_weights_is_caught(fake_opt, monkeypatch):
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    original = WeightStreamer.prefetch

    def off_by_one(self, li, p_index, slot):
        original(self, (li + 1) % self.L, p_index, slot)
        self.slot_label[slot] = (li, p_index)  # and lie about it

    monkeypatch.setattr(WeightStreamer, "prefetch", off_by_one)
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL


def test_gpu_attention_without_the_cached_kv_fetch_is_caught(fake_opt, monkeypatch):
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    monkeypatch.setattr(KVStore, "fetch", lambda self, lay, ch, which: None)
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL


@pytest.mark.parametrize("resident,n", [(0, 1), (1, 2)])
@pytest.mark.parametrize("decode", [ALL_GPU, policy_from_index(0b110000)], ids=["all-gpu", "mlp-on-cpu"])
def test_streamed_kv_on_the_gpu_matches_the_reference_and_moves_no_kv(resident, n, decode, fake_llama):
    """FlexGen's cache on the GPU (plan.streamed_kv_on_gpu): the same logits, and no KV fetch or write-back at all
    (check_run holds the run to exactly the plan's copies)."""
    plan = Plan(
        prefill_policy=ALL_GPU,
        decode_policy=decode,
        gpu_resident_layers=resident,
        prefill_minibatches=n,
        streamed_kv_on_gpu=True,
    )
    result, check = _run(fake_llama, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(result, plan, TINY_LLAMA, WORKLOAD, Device.GPU) == []
    copies = {r.name for r in result.records if r.kind == "copy"}
    assert not copies & {"kv_fetch", "kv_writeback"}, copies
    # and the same plan with the cache in host memory does fetch it
    host = plan.model_copy(update={"streamed_kv_on_gpu": False})
    result, _ = _run(fake_llama, host)
    assert {"kv_fetch", "kv_writeback"} <= {r.name for r in result.records if r.kind == "copy"}


def test_streamed_kv_on_the_gpu_without_writing_it_there_is_caught(fake_opt, monkeypatch):
    """The check can fail: a write of new K/V to the GPU-homed cache that goes missing changes the logits."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, streamed_kv_on_gpu=True)
    real = KVStore.write

    def drop_streamed(self, lay, ch, dev, k, v):
        if not lay.resident and lay.step > 0:
            return None
        return real(self, lay, ch, dev, k, v)

    monkeypatch.setattr(KVStore, "write", drop_streamed)
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL


def test_the_movers_pinned_pool_lends_the_same_buffers_to_every_run(fake_opt):
    """The D2H destinations and the K/V landing buffers come from the Mover's pinned pool: within a run it hands
    buffers out again, and a second run of the same executor allocates none and computes the reference's logits."""
    plan = Plan(prefill_policy=policy_from_index(21), decode_policy=ATTENTION_ON_CPU, prefill_minibatches=2)
    ex = Executor(Backend("fake"), fake_opt, plan, WORKLOAD)
    prompt = random_prompt(TINY_OPT, WORKLOAD, seed=1)
    first = ex.generate(prompt).pinned_pool
    assert {role for role, _ in first.bytes_by_role} == {"act_d2h", "kv_landing"}
    assert first.handouts == first.allocations + first.reuses and first.reuses > first.allocations > 0
    again = ex.generate(prompt, keep_logits=True)
    pool = again.pinned_pool
    assert (pool.allocations, pool.reuses, pool.buffers) == (0, first.handouts, first.buffers)
    check = check_against_reference(fake_opt, prompt, again.tokens, again.logits, CPU)
    assert check["logits_rel_err"] < LOGITS_RTOL


def test_a_pinned_pool_that_ignored_the_hosts_references_is_caught(fake_opt, monkeypatch):
    """A buffer goes back into the pool only when no tensor refers to it any more: a pool that lent out a D2H
    destination still held as a chunk's value (and read later, e.g. as a residual) would corrupt the logits."""
    plan = Plan(prefill_policy=policy_from_index(21), decode_policy=policy_from_index(42), prefill_minibatches=4)
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    monkeypatch.setattr("runtime.pinned_pool.storage_use_count", lambda tensor: 0)  # nothing ever looks held
    _, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] > 5 * LOGITS_RTOL


def test_the_dataflow_check_reports_a_missing_crossing(fake_opt):
    plan = Plan(prefill_policy=ATTENTION_ON_CPU, decode_policy=ATTENTION_ON_CPU)
    result, _ = _run(fake_opt, plan)
    result.records = [r for r in result.records if not (r.name == "act" and r.detail == "scores")]
    assert check_run(result, plan, TINY_OPT, WORKLOAD, Device.GPU) == []  # scores stay on the CPU here
    result.records = [r for r in result.records if not (r.name == "act" and r.detail == "ctx")]
    problems = check_run(result, plan, TINY_OPT, WORKLOAD, Device.GPU)
    assert problems and all("missing copy" in p and "ctx" in p for p in problems)


@pytest.mark.parametrize("model", [TINY_OPT, TINY_LLAMA], ids=["opt", "llama-gqa"])
def test_float32_execution_catches_a_two_percent_softmax_scale_error(model, monkeypatch):
    """In float32 the executor matches the independent reference to ~1e-6, so a tolerance of 1e-4 catches a
    kernel that scales the attention scores by 1.02 (a 2% softmax-scale error), on fused (score and context on
    one device) and split (across devices) attention alike."""
    from runtime import kernels

    backend = Backend("fake", torch.float32)
    arena = HostArena(
        backend,
        layer_layout(model).numel * model.num_layers,
        pinned=True,
        random_fill=True,
        seed=5,
        fan_in=model.hidden_size,
    )
    weights = ModelWeights(model, arena, backend, seed=5)
    prompt = random_prompt(model, WORKLOAD, seed=2)
    plans = [
        Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=1),
        Plan(
            prefill_policy="(0,1,0,0,0,0)",
            decode_policy="(0,0,1,0,0,0)",  # split: score and context apart
            gpu_resident_layers=0,
            prefill_minibatches=2,
        ),
    ]

    def run(plan):
        result = Executor(backend, weights, plan, WORKLOAD).generate(prompt, keep_logits=True)
        return check_against_reference(weights, prompt, result.tokens, result.logits, CPU)["logits_rel_err"]

    good = [run(p) for p in plans]
    assert max(good) < 1e-4, good
    real_attention, real_score = kernels.attention, kernels.attn_score
    monkeypatch.setattr(kernels, "attention", lambda q, *a, **k: real_attention(q * 1.02, *a, **k))
    monkeypatch.setattr(kernels, "attn_score", lambda q, *a, **k: real_score(q * 1.02, *a, **k))
    bad = [run(p) for p in plans]
    assert min(bad) > 1e-4 and min(bad) > 20 * max(good), (good, bad)


@pytest.mark.parametrize("model", [TINY_OPT, TINY_LLAMA], ids=["opt", "llama-gqa"])
def test_per_layer_hidden_states_match_the_reference_and_locate_a_bug(model, monkeypatch):
    """Each layer's prefill output, not only the logits, against the independent reference in float32 (a mixed
    plan: one resident layer, then qkv and fc1 on the GPU, attention, out_proj and fc2 on the CPU, two
    prefill chunks). A 2% error injected into the second layer's fc1 (the second fc1 call of the prefill pass)
    leaves layer 0 exact and shows first at layer 1."""
    from runtime import kernels
    from runtime.reference import layer_errors

    backend = Backend("fake", torch.float32)
    arena = HostArena(
        backend,
        layer_layout(model).numel * model.num_layers,
        pinned=True,
        random_fill=True,
        seed=7,
        fan_in=model.hidden_size,
    )
    weights = ModelWeights(model, arena, backend, seed=7)
    prompt = random_prompt(model, WORKLOAD, seed=3)
    plan = Plan(
        prefill_policy="(0,1,1,1,0,1)", decode_policy="(0,1,1,1,0,1)", gpu_resident_layers=1, prefill_minibatches=1
    )

    def errors() -> list[float]:
        result = Executor(backend, weights, plan, WORKLOAD).generate(prompt, keep_hidden=True)
        assert len(result.hidden) == model.num_layers
        return layer_errors(weights, prompt, result.hidden, CPU)

    good = errors()
    assert max(good) < 1e-5, good
    real_fc1 = kernels.fc1
    calls = {"n": 0}

    def fc1_bug_in_layer_1(h, *a, **k):
        calls["n"] += 1
        out = real_fc1(h, *a, **k)
        return out * 1.02 if calls["n"] == 2 else out  # (fc1 normalises its input: scale the output)

    monkeypatch.setattr(kernels, "fc1", fc1_bug_in_layer_1)
    bad = errors()
    assert bad[0] < 1e-5 and bad[1] > 1e-3, bad
    assert [i for i, e in enumerate(bad) if e > 1e-4][0] == 1


def test_close_frees_the_executors_gpu_buffers_without_the_cycle_collector(fake_opt):
    """The weight jobs call back into the executor, so ``del ex`` leaves its GPU buffers to the cycle
    collector; on the GPU host the next campaign point then ran out of memory under its cap. ``close()`` (and
    ``with Executor(...)``) must drop them at once."""
    import gc
    import weakref

    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=1)
    gc.collect()
    gc.disable()
    try:
        with Executor(Backend("fake"), fake_opt, plan, WORKLOAD) as ex:
            ex.generate(random_prompt(fake_opt.model, WORKLOAD, seed=1))
            held = [t for slot in ex.streamer.buffer_flat for t in slot.values()]
            held += [kv.gpu[w] for kv in ex.kv.layers if kv.resident for w in "kv"]
            refs = [weakref.ref(t) for t in held]
            assert len(refs) >= 4 and all(r() is not None for r in refs)
            del held
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()


@pytest.mark.parametrize("q, pos0", [(1, 7), (5, 0), (3, 4)])
def test_attention_never_lets_sdpa_pick_cudnn_and_matches_plain_softmax(q, pos0, monkeypatch):
    """kernels.attention keeps scaled_dot_product_attention off cuDNN (one graph build per new key length on
    Hopper: 66 ms per decode token in the H200 `lia run` of OPT-30B) and still computes softmax(QK^T/sqrt(d))V
    with the causal mask, checked against a hand-written float64 loop over heads and query rows."""
    import torch.nn.functional as F

    from runtime import kernels

    model = get_model("opt-30b")  # multi-head (G = 1): the SDPA path also in decode
    b, heads, d = 2, model.num_heads, model.head_dim
    s = pos0 + q
    gen = torch.Generator().manual_seed(3)
    q_in = torch.randn(b, q, heads * d, generator=gen)
    k = torch.randn(b, heads, s, d, generator=gen)
    v = torch.randn(b, heads, s, d, generator=gen)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    got = kernels.attention(q_in, k, v, model, pos0)
    assert seen == [(False, True)]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the process-wide setting is restored afterwards
    want = torch.empty(b, q, heads, d, dtype=torch.float64)
    qh = q_in.double().view(b, q, heads, d)
    for bi, h, i in itertools.product(range(b), range(heads), range(q)):
        keys = pos0 + i + 1  # causal: query row i sees positions 0 .. pos0 + i
        scores = (k[bi, h, :keys].double() @ qh[bi, i, h]) / d**0.5
        want[bi, i, h] = torch.softmax(scores, dim=0) @ v[bi, h, :keys].double()
    torch.testing.assert_close(got.double(), want.view(b, q, heads * d), rtol=1e-4, atol=1e-5)


def test_every_critical_host_to_device_copy_is_handed_to_the_feeder(fake_opt, monkeypatch):
    """The executor tells the weight feeder about each copy on the chain (activations to the GPU and the cached
    K/V fetched for GPU attention) with that copy's own end event, so the feeder can let it go first."""
    from runtime.streamer import WeightFeeder

    handed = []
    monkeypatch.setattr(WeightFeeder, "yield_to", lambda self, end: handed.append(end))
    plan = Plan(prefill_policy=ATTENTION_ON_CPU, decode_policy=policy_from_index(0b100101))
    result, check = _run(fake_opt, plan)
    assert check["logits_rel_err"] < LOGITS_RTOL
    to_gpu = [r for r in result.records if r.kind == "copy" and r.device == Device.GPU and r.name != "weights"]
    assert {r.name for r in to_gpu} >= {"act", "kv_fetch"} and len(handed) == len(to_gpu)
    ends = {id(r.end) for r in to_gpu}
    assert ends <= {id(e) for e in handed}


def test_gqa_decode_variants_compute_the_same_attention_as_a_hand_reference(monkeypatch):
    """Decode with GQA (G = 2 query heads per KV head) over the live prefix of a wider cache: the grouped matmul
    pair (LIA_GQA_DECODE=grouped) and SDPA with a group's heads as query rows (sdpa, the default) both equal, to
    bf16 precision, softmax(q k^T / sqrt(d)) v computed in float32 with each KV head repeated for its G query
    heads; an unknown variant is one clear error."""
    from runtime import kernels

    torch.manual_seed(0)
    b, s, width = 3, 11, 16
    kvh, g, d = TINY_LLAMA.num_kv_heads, TINY_LLAMA.num_heads // TINY_LLAMA.num_kv_heads, TINY_LLAMA.head_dim
    assert g == 2
    kc = torch.randn(b, kvh, width, d, dtype=torch.bfloat16)
    vc = torch.randn(b, kvh, width, d, dtype=torch.bfloat16)
    q_in = torch.randn(b, 1, TINY_LLAMA.q_dim, dtype=torch.bfloat16)
    k, v = kc[:, :, :s], vc[:, :, :s]  # the live prefix: a view, as the executor passes it
    qh = q_in.float().view(b, 1, kvh * g, d).transpose(1, 2)  # [b,H,1,d], head = kv_index * G + g
    kr, vr = k.float().repeat_interleave(g, dim=1), v.float().repeat_interleave(g, dim=1)
    ref = (torch.softmax(qh @ kr.transpose(-1, -2) / d**0.5, dim=-1) @ vr).transpose(1, 2).reshape(b, 1, -1)
    for variant in ("grouped", "sdpa"):
        monkeypatch.setenv("LIA_GQA_DECODE", variant)
        out = kernels.attention(q_in, k, v, TINY_LLAMA, pos0=s - 1)
        assert out.shape == ref.shape
        assert torch.allclose(out.float(), ref, rtol=2e-2, atol=2e-2), variant
        into = torch.empty_like(q_in)
        kernels.attention(q_in, k, v, TINY_LLAMA, pos0=s - 1, out=into)
        assert torch.equal(into, out)
    monkeypatch.setenv("LIA_GQA_DECODE", "flash")
    with pytest.raises(LiaInputError, match="LIA_GQA_DECODE"):
        kernels.attention(q_in, k, v, TINY_LLAMA, pos0=s - 1)


def test_both_gqa_decode_variants_run_the_model_as_the_reference_and_stay_out_of_the_setup(fake_llama, monkeypatch):
    """A whole run with CPU decode attention through either GQA decode kernel matches the plain forward
    (runtime.reference). The kernel is not part of the CPU setup string (the attention rows and validation rows
    record it in their own gqa_decode column), so a refit mixes CPU linear runs measured under either."""
    from runtime import cpu_setup

    plan = Plan(prefill_policy=ATTENTION_ON_CPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=1)
    setup = cpu_setup.CpuSetup(threads=2, physical_cores=2, bind="close", allocator="glibc")
    described = set()
    for variant in ("sdpa", "grouped"):
        monkeypatch.setenv("LIA_GQA_DECODE", variant)
        result, check = _run(fake_llama, plan)
        assert check["logits_rel_err"] < LOGITS_RTOL, variant
        described.add(setup.describe())
    assert len(described) == 1 and "gqa_decode" not in described.pop()


def test_an_unknown_kv_write_back_mode_is_refused(monkeypatch):
    from runtime.kvstore import contiguous_writeback

    monkeypatch.setenv("LIA_KV_WRITEBACK", "fast")
    with pytest.raises(LiaInputError, match="auto, pitched, contiguous"):
        contiguous_writeback(256)
