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
  issues every GPU sublayer that is ready (asynchronous), then runs the oldest ready CPU sublayer, so the
  CPU works on one chunk while the GPU and the copy engines work on others.

Timing: CUDA events around GPU sublayers and copies, perf_counter around CPU sublayers (after waiting for
their inputs), and per-pass wall time after synchronising the compute stream.

This module is the scheduler and the six-way sublayer dispatch; the rest is in its seams (bottom up, the order
tests/test_layering.py enforces): runtime/cudart.py (ctypes CUDA calls), backend.py (streams, events, copies),
records.py (OpRecord, RunResult, the Recorder), streamer.py (the weight feeder thread), layerpass.py (one layer of
one pass, one chunk), mover.py (activation copies), kvstore.py (the KV cache and its fetches), weight_stream.py
(the two GPU weight buffers and the prefetch schedule).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec
from lia_model.plan import Device, Plan
from lia_model.plan import head_device as plan_head_device
from lia_model.sublayers import SUBLAYERS, Stage, Sublayer
from lia_model.workload import Workload
from runtime import kernels
from runtime.backend import DTYPE, Backend, Event, Placed
from runtime.graph import is_resident, layer_policy, plan_passes
from runtime.hostmem import HostArena
from runtime.kvstore import KVStore, LayerKV
from runtime.layerpass import CTX, FC1, FC2, OUT, QKV, SCORE, SUBLAYER_INDEX, Chunk, LayerPass
from runtime.mover import Mover
from runtime.records import OpRecord, Recorder, RunResult
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
        self.resident_flat = cache.sync(backend, weights, self.R) if self.R else []
        attention_on_gpu = any(p[SUBLAYER_INDEX[s]] == Device.GPU for p in self.policy.values() for s in (SCORE, CTX))
        self.kv = KVStore(
            backend, self.rec, self.feeder, kv_shape, self.R, self.K, attention_on_gpu, self.mover.pool, kv_arena
        )
        self.streamer = WeightStreamer(backend, weights, plan, self.policy, self.rec, self.feeder)
        self._rope_cache: dict = {}
        self._mask_cache: dict = {}
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
        self.streamer.close()
        self.kv.close()
        self.mover.pool.clear()
        self.resident_flat = []
        self.rec.reset(True)
        self._rope_cache.clear()
        self._mask_cache.clear()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        feeder = getattr(self, "feeder", None)
        if feeder is not None:
            feeder.close()

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
            self._ship_early(lay, ch, "h", consumer=OUT, producer_consumer=QKV)
            if not resident and lay.dev(QKV) == Device.GPU:
                for which, sub in (("k", SCORE), ("v", CTX)):
                    if lay.dev(sub) == Device.GPU:
                        self.kv.fetch(lay, ch, which)
        nxt = [0] * n
        while True:
            for ch in chunks:  # issue every ready GPU sublayer (asynchronous)
                while nxt[ch.c] < 6 and lay.policy[nxt[ch.c]] == Device.GPU:
                    self._run(lay, ch, SUBLAYERS[nxt[ch.c]], Device.GPU)
                    nxt[ch.c] += 1
            # then one CPU sublayer: the oldest chunk's whose inputs are ready now, else the first chunk's to
            # become ready (the cost model's schedule, lia_model/schedule.py, makes the same choice)
            pending = [ch for ch in chunks if nxt[ch.c] < 6 and lay.policy[nxt[ch.c]] == Device.CPU]
            if pending:
                ch = self._first_ready(lay, pending, nxt)
                sub = SUBLAYERS[nxt[ch.c]]
                self._run(lay, ch, sub, Device.CPU)
                nxt[ch.c] += 1
                if sub == SCORE and lay.dev(CTX) == Device.CPU:  # fused attention: one kernel, not interrupted
                    self._run(lay, ch, CTX, Device.CPU)
                    nxt[ch.c] += 1
            elif all(i == 6 for i in nxt):
                break
        if not resident:
            done = self.backend.event(self.backend.compute)
            self.streamer.end(lay.slot, done, lay)
            self.kv.end_layer(done)
        return [ch.values["h_out"] for ch in chunks]

    _CPU_INPUT = {QKV: "h", SCORE: "q", CTX: "scores", OUT: "ctx", FC1: "h_mid", FC2: "mid"}

    def _cpu_inputs_ready(self, lay: LayerPass, ch: Chunk, sub: Sublayer) -> bool:
        """Whether every input a CPU sublayer of this chunk reads has landed in host memory by now (a
        non-blocking query of the copy events), including the write-back of the K/V that CPU attention reads."""
        name = self._CPU_INPUT[sub]
        if sub == CTX and lay.dev(SCORE) == Device.CPU:
            name = "q"  # fused attention reads Q (attn_score handed it on)
        copies = ch.values.get(name)
        if not copies:
            return False  # not produced yet
        placed = copies.get(Device.CPU)
        if placed is None:  # only on the GPU (e.g. the embedding): start its copy now, then poll it
            placed = copies[Device.CPU] = self.mover.move(
                next(iter(copies.values())), Device.CPU, lay.stage, lay.step, lay.li, ch.c, "act", name, lay.kind
            )
        if placed.ready is not None and not placed.ready.query():
            return False
        if sub in (SCORE, CTX):
            pending = lay.kv.written_for(ch.b0, ch.b1)
            if pending is not None and not pending.query():
                return False
        return True

    def _first_ready(self, lay: LayerPass, pending: list[Chunk], nxt: list[int]) -> Chunk:
        """The chunk whose next (CPU) sublayer runs now: the oldest whose inputs are ready, else the first to
        become ready (polled; ties go to the oldest). One chunk, or no CUDA: the oldest (it blocks on its
        inputs as before)."""
        if len(pending) == 1 or not self.backend.is_cuda:
            return pending[0]
        while True:
            for ch in pending:
                if self._cpu_inputs_ready(lay, ch, SUBLAYERS[nxt[ch.c]]):
                    return ch
            time.sleep(0)  # yield; the copies complete on their own

    def _params(self, lay: LayerPass, sub: Sublayer, dev: Device) -> dict[str, torch.Tensor]:
        if lay.resident:
            params = self.weights.layout.views(self.resident_flat[lay.li], sub)
        elif dev == Device.CPU:
            params = self.weights.host_views(lay.li, sub)
        else:
            params = self.streamer.views(lay, sub)
        want = self.backend.torch_device(dev).type
        for name, t in params.items():  # every weight a sublayer consumes lives where it runs
            if t.device.type != want:
                raise RuntimeError(
                    f"data-flow bug: {sub.value} of layer {lay.li} on the {dev.name} got weight '{name}' on {t.device}"
                )
        return params

    # ================================================================== data movement

    def _consumers(self, lay: LayerPass, name: str) -> list[Device]:
        """Devices that will read value ``name`` of this layer (for page-locking CPU outputs)."""
        if name == "h_out":
            if lay.li + 1 < self.L:
                pol = layer_policy(self.plan, lay.stage, lay.li + 1)
                return [pol[SUBLAYER_INDEX[QKV]], pol[SUBLAYER_INDEX[OUT]]]
            return [self.head_dev]
        users = {"q": [SCORE], "scores": [CTX], "ctx": [OUT], "h_mid": [FC1, FC2], "mid": [FC2]}[name]
        return [lay.dev(s) for s in users]

    def _out(self, lay: LayerPass, name: str, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        """Page-locked output buffer (the Mover's pool) for a CPU op whose result crosses to the GPU (None
        otherwise)."""
        if self.backend.is_cuda and Device.GPU in self._consumers(lay, name):
            return self.mover.pool.take("cpu_out", shape)
        return None

    def _need(self, lay: LayerPass, ch: Chunk, name: str, dev: Device, kind: str) -> torch.Tensor:
        """Value ``name`` on ``dev``, copying it there (once) if it lives elsewhere; waits until it is valid."""
        copies = ch.values[name]
        p = copies.get(dev)
        if p is None:
            src = next(iter(copies.values()))
            p = self.mover.move(src, dev, lay.stage, lay.step, lay.li, ch.c, kind, name, lay.kind)
            copies[dev] = p
        if p.ready is not None:
            if dev == Device.CPU:
                p.ready.synchronize()
            else:
                self.backend.wait(self.backend.compute, p.ready)
        return p.on(dev)

    def _ship_early(
        self, lay: LayerPass, ch: Chunk, name: str, consumer: Sublayer, producer_consumer: Sublayer
    ) -> None:
        """Start copying a residual input to ``consumer``'s device now, unless the sublayer that reads it
        first (``producer_consumer``) will copy it there anyway."""
        copies = ch.values[name]
        dev = lay.dev(consumer)
        if dev in copies or lay.dev(producer_consumer) == dev:
            return
        src = next(iter(copies.values()))
        copies[dev] = self.mover.move(src, dev, lay.stage, lay.step, lay.li, ch.c, "resid", name, lay.kind)

    # ================================================================== sublayers

    def _rope(self, dev: Device, pos0: int, q: int):
        if not self.model.uses_rope:
            return None
        key = (dev, pos0, q)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            positions = torch.arange(pos0, pos0 + q)
            self._rope_cache[key] = kernels.rope_tables(positions, self.model, self.backend.torch_device(dev))
        return self._rope_cache[key]

    def _mask(self, dev: Device, q: int, pos0: int, valid: int, width: int) -> torch.Tensor:
        """Attention mask, shared by every layer of a pass (built once per pass and device)."""
        m = self.model
        key = (dev, q, pos0, valid, width)
        if key not in self._mask_cache:
            if len(self._mask_cache) > 16:
                self._mask_cache.clear()
            self._mask_cache[key] = kernels.attention_mask(
                q, m.num_heads // m.num_kv_heads, pos0, valid, width, self.backend.torch_device(dev)
            )
        return self._mask_cache[key]

    # Values of a chunk that are dead once a sublayer has been issued: their last reader in the layer. Dropping
    # them then lets the caching allocator hand their blocks to the next chunk (on the same stream; copies on
    # other streams hold theirs through Backend.keep_alive). Held until the layer's end instead, every chunk's
    # activations and fc1 output were live at once: with 4 prefill minibatches Llama-2-70B ran out of GPU memory
    # 1.3 GB above the memory model (runtime/validation/wave2-g/).
    _DEAD_AFTER = {CTX: ("q", "scores"), OUT: ("h", "ctx"), FC2: ("h_mid", "mid")}

    def _run(self, lay: LayerPass, ch: Chunk, sub: Sublayer, dev: Device) -> None:
        self._run_sublayer(lay, ch, sub, dev)
        for name in self._DEAD_AFTER.get(sub, ()):
            ch.values.pop(name, None)

    def _run_sublayer(self, lay: LayerPass, ch: Chunk, sub: Sublayer, dev: Device) -> None:
        m = self.model
        b, q = ch.b1 - ch.b0, lay.q
        if sub == QKV:
            h = self._need(lay, ch, "h", dev, "act")
            p = self._params(lay, sub, dev)
            rope = self._rope(dev, lay.pos0, q)
            start = self.rec.stamp(dev)
            q_out, k, v = kernels.qkv(h, p, m, rope)
            if dev == Device.CPU:
                pinned = self._out(lay, "q", tuple(q_out.shape))
                if pinned is not None:
                    q_out = pinned.copy_(q_out)
                self.kv.write(lay, ch, dev, k, v)  # into the host cache: part of the CPU qkv's time
                self._finish(lay, ch, sub, dev, "q", q_out, start, b * q)
            else:
                # the GPU qkv's record ends with its kernels (its events used to cover issuing the K/V write-back
                # too: 0.4-0.9 ms against a 0.16 ms kernel, wave2-q2 traces); Q's copy to a CPU reader goes first
                self._finish(lay, ch, sub, dev, "q", q_out, start, b * q)
                self.kv.write(lay, ch, dev, k, v)
        elif sub == SCORE:
            if lay.dev(CTX) == dev:
                # Fused with attn_context on this device (kernels.attention): hand Q on, untimed.
                ch.values["scores"] = ch.values["q"]
                self.rec.compute(lay.stage, lay.step, lay.li, ch.c, sub.value, dev, q, lay.kind, self.rec.stamp(dev))
                return
            q_in = self._need(lay, ch, "q", dev, "act")
            keys = self.kv.read(lay, ch, "k", dev)
            out = (
                self._out(lay, "scores", (b, m.num_kv_heads, m.num_heads // m.num_kv_heads * q, keys.shape[2]))
                if dev == Device.CPU
                else None
            )
            mask = self._mask(dev, q, lay.pos0, lay.valid, keys.shape[2]) if q > 1 else None
            start = self.rec.stamp(dev)
            scores = kernels.attn_score(q_in, keys, m, mask, out=out)
            self._finish(lay, ch, sub, dev, "scores", scores, start, q)
        elif sub == CTX:
            out = self._out(lay, "ctx", (b, q, m.q_dim)) if dev == Device.CPU else None
            if lay.dev(SCORE) == dev:
                q_in = self._need(lay, ch, "q", dev, "act")  # fused: attn_score handed Q on
                keys = self.kv.read(lay, ch, "k", dev)
                values = self.kv.read(lay, ch, "v", dev)
                start = self.rec.stamp(dev)
                ctx = kernels.attention(q_in, keys, values, m, lay.pos0, out=out)
            else:
                scores = self._need(lay, ch, "scores", dev, "act")
                values = self.kv.read(lay, ch, "v", dev, width=scores.shape[-1])
                start = self.rec.stamp(dev)
                ctx = kernels.attn_context(scores, values, m, q, out=out)
            self._finish(lay, ch, sub, dev, "ctx", ctx, start, q)
        elif sub == OUT:
            ctx = self._need(lay, ch, "ctx", dev, "act")
            resid = self._need(lay, ch, "h", dev, "resid")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "h_mid", (b, q, m.hidden_size)) if dev == Device.CPU else None
            start = self.rec.stamp(dev)
            h_mid = kernels.out_proj(ctx, p, resid, out=out)
            self._finish(lay, ch, sub, dev, "h_mid", h_mid, start, b * q)
            self._ship_early(lay, ch, "h_mid", consumer=FC2, producer_consumer=FC1)
        elif sub == FC1:
            h_mid = self._need(lay, ch, "h_mid", dev, "act")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "mid", (b, q, m.ffn_size)) if dev == Device.CPU else None
            start = self.rec.stamp(dev)
            mid = kernels.fc1(h_mid, p, m, out=out)
            self._finish(lay, ch, sub, dev, "mid", mid, start, b * q)
        else:
            mid = self._need(lay, ch, "mid", dev, "act")
            resid = self._need(lay, ch, "h_mid", dev, "resid")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "h_out", (b, q, m.hidden_size)) if dev == Device.CPU else None
            start = self.rec.stamp(dev)
            h_out = kernels.fc2(mid, p, resid, out=out)
            self._finish(lay, ch, sub, dev, "h_out", h_out, start, b * q)

    def _finish(
        self,
        lay: LayerPass,
        ch: Chunk,
        sub: Sublayer,
        dev: Device,
        name: str,
        value: torch.Tensor,
        start: Event,
        tokens: int,
    ) -> None:
        self.rec.compute(lay.stage, lay.step, lay.li, ch.c, sub.value, dev, tokens, lay.kind, start)
        # A GPU value that a CPU sublayer reads next is copied on the D2H stream, which must wait for it.
        ready = None
        consumers = self._consumers(lay, name)
        if dev == Device.GPU and self.backend.is_cuda and Device.CPU in consumers:
            ready = self.backend.event(self.backend.compute)
        ch.values[name] = {dev: Placed(value, dev, ready)}
        # The sublayer that reads it next (the first consumer; the others read it as a residual) on the CPU:
        # copied to the host right behind its producer, as the cost model's schedule assumes.
        # A layer's output is the next layer's input "h" (its copy is recorded as that layer's, as runtime/dataflow.py
        # expects); the last layer's goes to the head, which copies only the last position.
        last_layer = name == "h_out" and lay.li + 1 == self.L
        if ready is not None and consumers[0] == Device.CPU and not last_layer:
            li, detail = (lay.li + 1, "h") if name == "h_out" else (lay.li, name)
            kind = "resident" if is_resident(self.plan, li) else "streamed"
            ch.values[name][Device.CPU] = self.mover.move(
                ch.values[name][dev], Device.CPU, lay.stage, lay.step, li, ch.c, "act", detail, kind
            )


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
    """bf16 elements of the host KV cache of a plan's streamed layers."""
    streamed = model.num_layers - plan.gpu_resident_layers
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
