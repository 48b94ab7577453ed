"""Execute a Plan: prefill plus greedy decode, each sublayer on the device the plan names.

Per pass (prefill, then decode steps t = 1 .. L_out-1), per layer:

- Resident layers (the first ``plan.gpu_resident_layers``) run all-GPU with weights and KV in GPU memory.
- Streamed layers run each sublayer where the stage's policy vector says (1 = CPU, 0 = GPU). Their weights
  live in host memory; the GPU sublayers' weights are copied into one of two alternating GPU buffers on a
  dedicated copy stream. With ``plan.overlap`` the copy of the next streamed layer (across the pass
  boundary too) is issued before this layer computes, and events order it after the last use of its buffer.
  CPU sublayers read the host weights directly.
- Activations cross exactly where consecutive sublayers sit on different devices (fc2 -> next qkv too),
  on separate host-to-device / device-to-host streams. Residual inputs (the layer input for out_proj,
  h_mid for fc2) follow the sublayer that adds them; these copies are recorded as kind "resid".
- The KV cache of a streamed layer lives in host memory ([B, kv_heads, L_in + L_out, head_dim] per K and V).
  A CPU qkv writes it directly; a GPU qkv writes new K/V back with a pitched D2H copy. GPU attention of a
  streamed layer reads from a GPU staging buffer: new K/V from a GPU qkv are put there on the GPU, cached
  positions (and new ones made by a CPU qkv) are fetched from the host cache.
- Prefill runs in ``plan.prefill_minibatches`` chunks of the batch. For each layer a small scheduler
  (runtime/scheduler.py) issues every GPU sublayer that is ready (asynchronous), then runs the oldest ready CPU
  sublayer, so the CPU works on one chunk while the GPU and the copy engines work on others.

Timing: CUDA events around GPU sublayers and copies, perf_counter around CPU sublayers (after waiting for
their inputs), and per-pass wall time after synchronising the compute stream.

This module builds the run's parts, wires them and walks the plan's passes (embedding, layers, head); the rest is
in its seams (bottom up, the order tests/test_layering.py enforces): runtime/cudart.py (ctypes CUDA calls),
backend.py (streams, events, copies), records.py (OpRecord, RunResult, the Recorder), streamer.py (the weight feeder
thread), layerpass.py (one layer of one pass, one chunk), mover.py (activation copies), kvstore.py (the KV cache and
its fetches), weight_stream.py (the two GPU weight buffers and the prefetch schedule), dispatch.py (the six-way
sublayer dispatch), scheduler.py (which chunk's sublayer of a layer runs next), cpu_worker.py (the thread that
runs the CPU sublayers with LIA_CPU_WORKER=thread, so that the launching thread never blocks on them).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec
from lia_model.plan import Device, Plan
from lia_model.plan import head_device as plan_head_device
from lia_model.sublayers import Stage
from lia_model.workload import Workload
from runtime import kernels
from runtime.backend import DTYPE, Backend, Event, Placed
from runtime.cpu_worker import CpuWorker, worker_mode
from runtime.dispatch import SublayerDispatch
from runtime.graph import is_resident, layer_policy, plan_passes
from runtime.hostmem import HostArena
from runtime.kvstore import KVStore, LayerKV
from runtime.layerpass import CTX, OUT, QKV, SCORE, SUBLAYER_INDEX, Chunk, LayerPass
from runtime.mover import Mover
from runtime.records import OpRecord, Recorder, RunResult
from runtime.scheduler import Scheduler
from runtime.streamer import WeightFeeder
from runtime.weight_stream import WeightStreamer
from runtime.weights import ModelWeights, check_runnable, embedding_positions_offset


class GpuLayerCache:
    """GPU copies of whole layers for resident layers, kept across runs of the same model."""

    def __init__(self) -> None:
        self.model_name: Optional[tuple[str, str]] = None  # (model, stored weight dtype) the layers belong to
        self.layers: dict[int, torch.Tensor] = {}

    def sync(self, backend: Backend, weights: ModelWeights, resident: int) -> list[torch.Tensor]:
        key = (weights.model.name, weights.weight_dtype.value)
        if self.model_name != key:
            self.layers.clear()
            self.model_name = key
        self.trim(resident)
        if backend.is_cuda:
            torch.cuda.empty_cache()
        for li in range(resident):
            if li not in self.layers:
                t = backend.empty((weights.layout.numel,), Device.GPU)
                t.copy_(weights.host_layers[li])
                self.layers[li] = t
        return [self.layers[li] for li in range(resident)]

    def trim(self, resident: int) -> None:
        for li in [k for k in self.layers if k >= resident]:
            del self.layers[li]

    def clear(self) -> None:
        self.layers.clear()
        self.model_name = None


class Executor:
    """Runs one plan for one model and workload; allocate once, ``generate`` many times."""

    def __init__(
        self,
        backend: Backend,
        weights: ModelWeights,
        plan: Plan,
        workload: Workload,
        kv_arena: Optional[HostArena] = None,
        layer_cache: Optional[GpuLayerCache] = None,
    ) -> None:
        self.backend = backend
        self.weights = weights
        self.model: ModelSpec = weights.model
        self.plan = plan
        self.workload = workload
        m = self.model
        self.B, self.L_in, self.L_out = workload.batch, workload.input_len, workload.output_len
        self.S = self.L_in + self.L_out
        self.L = m.num_layers
        self.R = plan.gpu_resident_layers
        self.K = self.L - self.R
        self.policy = {Stage.PREFILL: plan.prefill_policy, Stage.DECODE: plan.decode_policy}
        check_runnable(workload.precision)
        cpu_worker_mode = worker_mode()  # LIA_CPU_WORKER, checked before any thread starts
        if workload.precision.weight_dtype != weights.weight_dtype:
            raise LiaInputError(
                "--weight-dtype",
                f"the workload runs {workload.precision.weight_dtype.value} weights but these weights are stored in "
                f"{weights.weight_dtype.value}",
                "build the weights at the workload's precision (ModelWeights(..., weight_dtype=...))",
            )
        uses_gpu = plan_uses_gpu(plan, self.L)
        self.head_dev = head_device(plan, self.L, backend.has_gpu)
        if uses_gpu and not backend.has_gpu:
            raise LiaInputError(
                "GPU",
                "the plan runs sublayers on the GPU but this machine has no CUDA device",
                "run it on a machine with an NVIDIA GPU, or use an all-CPU plan (the ipex baseline)",
            )
        kv_shape = (self.B, m.num_kv_heads, self.S, m.head_dim)
        self.rec = Recorder(backend)
        self.feeder = WeightFeeder(backend)
        self.mover = Mover(backend, self.rec, self.feeder)
        # Resident layers: whole layers on the GPU (kept across runs by the GpuLayerCache).
        cache = layer_cache or GpuLayerCache()
        resident_flat = cache.sync(backend, weights, self.R) if self.R else []
        attention_on_gpu = any(p[SUBLAYER_INDEX[s]] == Device.GPU for p in self.policy.values() for s in (SCORE, CTX))
        self.kv = KVStore(
            backend,
            self.rec,
            self.feeder,
            kv_shape,
            self.R,
            self.K,
            attention_on_gpu,
            self.mover.pool,
            kv_arena,
            streamed_on_gpu=plan.streamed_kv_on_gpu,
        )
        self.streamer = WeightStreamer(backend, weights, plan, self.policy, self.rec, self.feeder)
        self.dispatch = SublayerDispatch(
            backend, weights, plan, self.head_dev, self.rec, self.mover, self.kv, self.streamer, resident_flat
        )
        # CPU sublayers on a worker thread (LIA_CPU_WORKER=thread) or on this one (inline, the default)
        self.cpu_worker = (
            CpuWorker(self.dispatch.lock, torch.get_num_threads()) if cpu_worker_mode == "thread" else None
        )
        self.scheduler = Scheduler(backend, self.mover, self.dispatch, self.cpu_worker)
        self.passes: list[tuple[Stage, int]] = []

    @property
    def records(self) -> list[OpRecord]:
        """The last run's timed operations."""
        return self.rec.records

    # ================================================================== public

    def close(self) -> None:
        """Stop the weight feeder's thread and drop every GPU buffer this executor holds, now.

        The feeder's jobs call back into the executor, so an executor is part of a reference cycle and
        ``del ex`` alone frees its buffers only when the cycle collector next runs. Measured on the GPU host
        (2026-11-30, wave-2 campaign part B): the next point's buffers were allocated beside the previous
        point's and ran out of memory under its cap. Resident layers belong to the ``GpuLayerCache``."""
        self.feeder.close()
        if self.cpu_worker is not None:
            self.cpu_worker.close()
        self.streamer.close()
        self.kv.close()
        self.mover.pool.clear()
        self.dispatch.close()  # the resident layers' GPU copies, the RoPE tables and masks
        self.rec.reset(True)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        feeder = getattr(self, "feeder", None)
        if feeder is not None:
            feeder.close()
        worker = getattr(self, "cpu_worker", None)
        if worker is not None:
            worker.close()

    def generate(
        self,
        prompt: torch.Tensor,
        output_len: Optional[int] = None,
        keep_logits: bool = False,
        profile: bool = True,
        select: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
        on_token: Optional[Callable[[int, torch.Tensor], bool]] = None,
        keep_hidden: bool = False,
    ) -> RunResult:
        """Prefill ``prompt`` [B, L_in] and decode to ``output_len`` tokens (<= the workload's).
        ``keep_hidden``: also return every layer's prefill output (for per-layer checks; synchronises).

        ``select(t, logits [B, vocab]) -> ids [B]`` picks output token t (default greedy: argmax; sampling:
        runtime/generate.py); its time counts in the pass. ``on_token(t, ids)`` runs after pass t, outside its
        timing (streaming); returning True stops generation there."""
        out_len = output_len or self.L_out
        if out_len > self.L_out or prompt.shape != (self.B, self.L_in):
            raise ValueError("generate() must stay within the workload the executor was sized for")
        be = self.backend
        self.rec.reset(profile)
        nodes = plan_passes(self.plan, self.B, self.L_in, out_len)
        self.passes = [(node.stage, node.step) for node in nodes]
        self.streamer.reset(self.passes)
        self.kv.reset()
        self.mover.pool.reset_counts()
        tokens, logits_out, pass_s = [], [], []
        hidden: list[torch.Tensor] = []
        with torch.inference_mode(), be.on_stream(be.compute):
            ids = prompt.to(be.torch_device(self.head_dev))
            be.synchronize()
            base = (Event(be.is_cuda).record(be.compute if be.is_cuda else None), time.perf_counter())
            self.streamer.start()
            for node in nodes:
                t0 = time.perf_counter()
                p_index, stage, step, pos0, q = node.index, node.stage, node.step, node.pos0, node.q
                x = self._embed(ids, pos0, q, stage, step)
                chunks = [  # per chunk, the hidden state's copies by device
                    {self.head_dev: Placed(x[b0:b1], self.head_dev, x_ready(be, self.head_dev))}
                    for b0, b1 in node.chunks
                ]
                del x  # the chunks' views hold it only until the first layer's outputs replace them
                for li in range(self.L):
                    chunks = self._layer(stage, step, p_index, li, chunks, pos0, q)
                    if keep_hidden and p_index == 0:
                        be.synchronize()
                        hidden.append(torch.cat([next(iter(d.values())).t.float().cpu() for d in chunks], dim=0))
                logits = self._head(chunks, stage, step)
                next_ids = logits.argmax(dim=-1) if select is None else select(p_index, logits)
                if be.is_cuda:
                    be.compute.synchronize()
                pass_s.append(time.perf_counter() - t0)
                tokens.append(next_ids)
                if keep_logits:
                    logits_out.append(logits.float().cpu())
                ids = next_ids[:, None]
                if on_token is not None and on_token(p_index, next_ids):
                    break
            self.streamer.drain()  # every prefetch queued (the feeder thread is idle)
            be.synchronize()
        for r in self.records:
            if r.start is not None and r.end is not None:
                r.seconds = r.end.seconds_since(r.start)
        return RunResult(
            ttft_s=pass_s[0],
            tpot_s=pass_s[1:],
            latency_s=float(sum(pass_s)),
            batch=self.B,
            tokens=torch.stack([t.cpu() for t in tokens], dim=1),
            logits=logits_out if keep_logits else None,
            records=self.records,
            base=base,
            hidden=hidden if keep_hidden else None,
            pinned_pool=self.mover.pool.stats(),
        )

    # ================================================================== passes

    def _embed(self, ids: torch.Tensor, pos0: int, q: int, stage: Stage, step: int) -> torch.Tensor:
        emb = self.weights.embeddings_on(self.head_dev, self.backend)
        start = self.rec.stamp(self.head_dev)
        x = emb.tokens[ids]  # [B, q, h]
        if emb.positions is not None:
            off = embedding_positions_offset(self.model) + pos0
            x = x + emb.positions[off : off + q][None]
        self.rec.compute(stage, step, -1, 0, "embed", self.head_dev, self.B * q, "-", start)
        return x

    def _head(self, chunks: list[dict[Device, Placed]], stage: Stage, step: int) -> torch.Tensor:
        emb = self.weights.embeddings_on(self.head_dev, self.backend)
        lasts = []
        for c, copies in enumerate(chunks):
            p = copies.get(self.head_dev) or next(iter(copies.values()))
            if p.dev == Device.CPU and p.ready is not None:
                p.ready.synchronize()  # a host copy still in flight
            # (no event: a copy to the host orders itself after the slice, recorded on the compute stream)
            last = Placed(p.t[:, -1].contiguous(), p.dev, None)
            moved = self.mover.move(last, self.head_dev, stage, step, -1, c, "head", "last hidden", "-")
            if moved.ready is not None and moved is not last:
                if self.head_dev == Device.CPU:
                    moved.ready.synchronize()  # the CPU head reads it next
                else:
                    self.backend.wait(self.backend.compute, moved.ready)
            lasts.append(moved.t)
        x = torch.cat(lasts, dim=0)
        start = self.rec.stamp(self.head_dev)
        logits = kernels.final_logits(x, emb.norm_w, emb.norm_b, emb.lm_head, self.model.norm_eps)
        self.rec.compute(stage, step, -1, 0, "head", self.head_dev, self.B, "-", start)
        return logits

    def _layer(
        self, stage: Stage, step: int, p_index: int, li: int, inputs: list[dict[Device, Placed]], pos0: int, q: int
    ) -> list[dict[Device, Placed]]:
        """One layer over the chunks; ``inputs`` and the result hold each chunk's hidden state by device (a copy
        made early for the next layer's qkv travels with it)."""
        resident = is_resident(self.plan, li)
        lay = LayerPass(stage, step, p_index, li, resident, layer_policy(self.plan, stage, li), pos0, q, self.kv[li])
        if not resident:
            lay.slot = self.streamer.begin(lay)
        n = len(inputs)
        bsz = self.B // n
        chunks = [Chunk(c, c * bsz, (c + 1) * bsz, {"h": dict(inputs[c])}) for c in range(n)]
        # Early work that does not depend on this layer's compute: residual copies and cached-KV fetches.
        for ch in chunks:
            copies = ch.values["h"]
            if lay.dev(QKV) == Device.CPU and Device.CPU not in copies and self.backend.is_cuda:
                # a CPU qkv reads an input that is only on the GPU (the embedding): copy it now, as the schedule does
                copies[Device.CPU] = self.mover.move(
                    next(iter(copies.values())), Device.CPU, stage, step, li, ch.c, "act", "h", lay.kind
                )
            self.dispatch.ship_early(lay, ch, "h", consumer=OUT, producer_consumer=QKV)
            if not resident and lay.dev(QKV) == Device.GPU:
                for which, sub in (("k", SCORE), ("v", CTX)):
                    if lay.dev(sub) == Device.GPU:
                        self.kv.fetch(lay, ch, which)
        self.scheduler.run_layer(lay, chunks)
        if not resident:
            done = self.backend.event(self.backend.compute)
            self.streamer.end(lay.slot, done, lay)
            self.kv.end_layer(done)
        return [ch.values["h_out"] for ch in chunks]


def plan_uses_gpu(plan: Plan, num_layers: int) -> bool:
    streamed = num_layers - plan.gpu_resident_layers
    return plan.gpu_resident_layers > 0 or (
        streamed > 0 and any(d == Device.GPU for p in (plan.prefill_policy, plan.decode_policy) for d in p)
    )


def head_device(plan: Plan, num_layers: int, machine_has_gpu: bool) -> Device:
    """Where the embeddings and the LM head run: the plan's head device (lia_model.plan.head_device: the CPU
    for a plan that uses no GPU, so the ipex baseline touches no GPU memory), and the CPU on a machine
    without a GPU."""
    return plan_head_device(plan) if machine_has_gpu else Device.CPU


def x_ready(backend: Backend, dev: Device) -> Optional[Event]:
    """Event after the embedding (GPU) so that copy streams can order after it."""
    if backend.is_cuda and dev == Device.GPU:
        return backend.event(backend.compute)
    return None


def random_prompt(model: ModelSpec, workload: Workload, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 101)
    return torch.randint(0, model.vocab_size, (workload.batch, workload.input_len), generator=gen)


def kv_arena_elements(model: ModelSpec, workload: Workload, plan: Plan) -> int:
    """bf16 elements of the host KV cache of a plan's streamed layers (none when it lives on the GPU)."""
    streamed = 0 if plan.streamed_kv_on_gpu else model.num_layers - plan.gpu_resident_layers
    return (
        2 * streamed * workload.batch * model.num_kv_heads * (workload.input_len + workload.output_len) * model.head_dim
    )


__all__ = [
    "Executor",
    "RunResult",
    "OpRecord",
    "GpuLayerCache",
    "LayerKV",
    "random_prompt",
    "kv_arena_elements",
    "DTYPE",
]
