"""CPU sublayers on the worker thread (LIA_CPU_WORKER=thread, runtime/cpu_worker.py): the same function as inline
and the plain forward, the same data moved, and GPU work issued while a CPU sublayer runs (issue 10: "CPU
sublayers run on a worker thread so the launching thread never blocks"). CPU only: the "fake" backend stands the
GPU in with separate CPU allocations (tests/test_runtime_correctness.py)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lia_model.errors import LiaInputError
from lia_model.plan import ALL_CPU, ATTENTION_ON_CPU, Device, Plan
from lia_model.sublayers import SUBLAYERS, Sublayer
from lia_model.workload import Workload
from runtime import kernels
from runtime.backend import Backend
from runtime.cpu_worker import RuntimeLock, worker_mode
from runtime.dataflow import check_run
from runtime.dispatch import SublayerDispatch
from runtime.executor import Executor, random_prompt
from runtime.layerpass import CTX, OUT
from runtime.reference import LOGITS_RTOL, check_against_reference
from tests.test_runtime_correctness import CPU, TINY_LLAMA, TINY_OPT, WORKLOAD, _weights


def on_cpu(*names: str) -> tuple[Device, ...]:
    """The policy vector with these sublayers on the CPU (1) and the rest on the GPU (0)."""
    return tuple(Device.CPU if s in {Sublayer(n) for n in names} else Device.GPU for s in SUBLAYERS)


@pytest.fixture(scope="module")
def fake_weights():
    return {"opt": _weights("fake", TINY_OPT), "llama": _weights("fake", TINY_LLAMA)}


def _generate(weights, plan: Plan, mode: str, monkeypatch, workload: Workload = WORKLOAD):
    monkeypatch.setenv("LIA_CPU_WORKER", mode)
    ex = Executor(Backend("fake"), weights, plan, workload)
    try:
        prompt = random_prompt(weights.model, workload, seed=1)
        result = ex.generate(prompt, keep_logits=True)
        threaded = ex.cpu_worker is not None
    finally:
        ex.close()
    return result, prompt, threaded


@pytest.mark.parametrize("model", ["opt", "llama"])
@pytest.mark.parametrize(
    "prefill,decode,minibatches",
    [
        (ATTENTION_ON_CPU, ATTENTION_ON_CPU, 2),
        (on_cpu("qkv", "attn_context", "out_proj", "fc2"), on_cpu("attn_score", "fc1"), 4),
        (ALL_CPU, on_cpu("out_proj", "fc1", "fc2"), 2),
    ],
)
def test_the_worker_computes_what_inline_does(fake_weights, model, prefill, decode, minibatches, monkeypatch):
    weights = fake_weights[model]
    plan = Plan(
        prefill_policy=prefill,
        decode_policy=decode,
        gpu_resident_layers=1,
        prefill_minibatches=minibatches,
    )
    inline, prompt, threaded = _generate(weights, plan, "inline", monkeypatch)
    assert not threaded
    worker, _, threaded = _generate(weights, plan, "thread", monkeypatch)
    assert threaded
    assert torch.equal(worker.tokens, inline.tokens)
    # the same kernels on the same inputs: the same logits to the bit
    assert all(torch.equal(a, b) for a, b in zip(worker.logits, inline.logits))
    check = check_against_reference(weights, prompt, worker.tokens, worker.logits, CPU)
    assert check["logits_rel_err"] < LOGITS_RTOL
    assert check_run(worker, plan, weights.model, WORKLOAD, Device.GPU) == []

    # every CPU sublayer recorded once, as inline
    def cpu_ops(result) -> list[tuple]:
        return sorted(
            (o.stage.value, o.step, o.layer, o.chunk, o.name)
            for o in result.records
            if o.kind == "compute" and o.device == Device.CPU
        )

    assert cpu_ops(worker) == cpu_ops(inline)


def _issue_during_cpu_attention(weights, mode: str, monkeypatch) -> tuple[float, float, float]:
    """Prefill in 2 minibatches with attention on the CPU: when the first chunk's CPU attention ends, its GPU
    out_proj becomes issuable while the second chunk's CPU attention is due. Returns (start, end) of the second
    chunk's CPU attention kernel in the first streamed layer and when the first chunk's out_proj was issued."""
    marks: dict[str, float] = {}
    issued = threading.Event()
    real_attention = kernels.attention
    real_run = SublayerDispatch.run_sublayer

    def attention(q_in, *args, **kwargs):
        if q_in.device.type == "cpu" and "start" not in marks and marks.get("chunk") == 1:
            marks["start"] = time.perf_counter()
            issued.wait(timeout=0.5)  # the launching thread issues meanwhile, if it is free to
            marks["end"] = time.perf_counter()
        return real_attention(q_in, *args, **kwargs)

    def run_sublayer(self, lay, ch, sub, dev):
        if lay.step == 0 and not lay.resident and sub == CTX and dev == Device.CPU:
            marks["chunk"] = ch.c
        if lay.step == 0 and not lay.resident and sub == OUT and dev == Device.GPU and ch.c == 0:
            marks.setdefault("issue", time.perf_counter())
            issued.set()
        return real_run(self, lay, ch, sub, dev)

    monkeypatch.setattr(kernels, "attention", attention)
    monkeypatch.setattr(SublayerDispatch, "run_sublayer", run_sublayer)
    plan = Plan(
        prefill_policy=ATTENTION_ON_CPU,
        decode_policy=ATTENTION_ON_CPU,
        gpu_resident_layers=0,
        prefill_minibatches=2,
    )
    _generate(weights, plan, mode, monkeypatch, Workload(batch=4, input_len=7, output_len=2))
    return marks["start"], marks["end"], marks["issue"]


def test_gpu_work_is_issued_while_a_cpu_sublayer_runs_on_the_worker(fake_weights, monkeypatch):
    start, end, issue = _issue_during_cpu_attention(fake_weights["opt"], "thread", monkeypatch)
    assert start < issue < end


def test_inline_the_launching_thread_issues_only_between_cpu_sublayers(fake_weights, monkeypatch):
    start, end, issue = _issue_during_cpu_attention(fake_weights["opt"], "inline", monkeypatch)
    assert issue < start  # the first chunk's out_proj went out before the second chunk's attention began


def test_a_failing_cpu_sublayer_raises_in_the_launching_thread(fake_weights, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken CPU kernel")

    monkeypatch.setattr(kernels, "fc1", broken)
    plan = Plan(prefill_policy=on_cpu("fc1"), decode_policy=on_cpu("fc1"))
    with pytest.raises(RuntimeError, match="broken CPU kernel"):
        _generate(fake_weights["opt"], plan, "thread", monkeypatch)


@pytest.mark.parametrize("value", ["threads", "1", ""])
def test_an_unknown_worker_setting_is_one_clear_error(value, monkeypatch):
    monkeypatch.setenv("LIA_CPU_WORKER", value)
    with pytest.raises(LiaInputError, match="LIA_CPU_WORKER"):
        worker_mode()


def test_the_lock_is_let_go_only_by_its_holder():
    lock = RuntimeLock()
    with lock.unlocked():  # not held: a no-op
        assert not lock.held_here
    lock.acquire()
    with lock.unlocked():
        assert not lock.held_here
        other = threading.Thread(target=lambda: (lock.acquire(), lock.release()))
        other.start()
        other.join(timeout=1)
        assert not other.is_alive()  # another thread could take it meanwhile
    assert lock.held_here
    lock.release()


def test_the_worker_shortens_the_gil_switch_interval_while_it_lives():
    import sys

    from runtime.cpu_worker import SWITCH_INTERVAL_S, CpuWorker

    before = sys.getswitchinterval()
    worker = CpuWorker(RuntimeLock(), threads=1)
    try:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        job = worker.submit(lambda: None, "tag")
        worker.wait(job)
        assert job.done.is_set() and job.error is None
    finally:
        worker.close()
    assert sys.getswitchinterval() == pytest.approx(before)


def _probe_faults(mode: str) -> tuple[float, float]:
    """(main, worker) minor page faults per call of tools/probe_worker_faults.py in a fresh interpreter (glibc fixes
    its arena limit once per process)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LIA_CPU_WORKER": mode}
    out = subprocess.run(
        [
            sys.executable,
            "tools/probe_worker_faults.py",
            "--batch",
            "2",
            "--heads",
            "32",
            "--tokens",
            "512",
            "--calls",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout
    faults = {
        line.split()[0]: float(line.split()[3]) for line in out.splitlines() if line.split()[0] in ("main", "worker")
    }
    return faults["main"], faults["worker"]


def test_the_worker_setup_keeps_large_temporaries_mapped():
    # one malloc arena (cpu_setup.worker_mode): the worker's SDPA temporaries (B=8, 72 heads, 512 x 512, bf16) reuse
    # their pages as the main thread's do (0 faults a call in 8 of 8 runs on the 2-core VM); in the inline setup a worker
    # thread faulted 18,721 pages a call. (At B=2 x 32 heads 8 MB were faulted a call in 1 of 8 runs even so: the bound
    # leaves room for that.)
    main, worker = _probe_faults("thread")
    assert main < 4096 and worker < 4096


def test_a_closed_worker_refuses_jobs_and_nested_workers_keep_the_interval():
    import sys

    from runtime.cpu_worker import SWITCH_INTERVAL_S, CpuWorker

    before = sys.getswitchinterval()
    first, second = CpuWorker(RuntimeLock(), threads=1), CpuWorker(RuntimeLock(), threads=1)
    first.close()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)  # the second still lives
    with pytest.raises(RuntimeError, match="closed"):
        first.submit(lambda: None, "tag")
    second.close()
    second.close()  # closing twice is harmless
    assert sys.getswitchinterval() == pytest.approx(before)


def test_an_error_in_the_launching_thread_waits_for_the_workers_job(fake_weights, monkeypatch):
    """The launching thread raises (the first chunk's GPU out_proj) while the worker runs the second chunk's CPU
    attention: the error reaches the caller only after that job has ended."""
    ended: list[float] = []
    real_attention = kernels.attention
    real_run = SublayerDispatch.run_sublayer

    def attention(q_in, *args, **kwargs):
        out = real_attention(q_in, *args, **kwargs)
        if q_in.device.type == "cpu":
            time.sleep(0.2)
            ended.append(time.perf_counter())
        return out

    def run_sublayer(self, lay, ch, sub, dev):
        if lay.step == 0 and not lay.resident and sub == OUT and dev == Device.GPU and ch.c == 0:
            raise RuntimeError("launch failed")
        return real_run(self, lay, ch, sub, dev)

    monkeypatch.setattr(kernels, "attention", attention)
    monkeypatch.setattr(SublayerDispatch, "run_sublayer", run_sublayer)
    plan = Plan(
        prefill_policy=ATTENTION_ON_CPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=0, prefill_minibatches=2
    )
    monkeypatch.setenv("LIA_CPU_WORKER", "thread")
    workload = Workload(batch=4, input_len=7, output_len=2)
    ex = Executor(Backend("fake"), fake_weights["opt"], plan, workload)
    try:
        with pytest.raises(RuntimeError, match="launch failed"):
            ex.generate(random_prompt(fake_weights["opt"].model, workload, seed=1))
        raised = time.perf_counter()  # before close(), which would wait for the worker anyway
    finally:
        ex.close()
    assert len(ended) == 2 and ended[-1] < raised  # both chunks' attention ended before the error was caught


@pytest.mark.parametrize("exported", [False, True])
def test_the_binding_is_reported_as_it_is(exported):
    """OpenMP reads OMP_PROC_BIND / OMP_PLACES when torch loads it: set in-process by cpu_setup.apply() they do
    nothing, exported before Python starts they bind (runtime/validation/cpu-worker-probe/)."""
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to bind")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    if exported:
        env.update(OMP_PROC_BIND="close", OMP_PLACES="cores")
    code = "from runtime import cpu_setup; cpu_setup.apply(); print(cpu_setup.binding_in_effect())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().startswith("bound to CPU(s)" if exported else "not in effect")
