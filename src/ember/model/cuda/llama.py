"""The CUDA backend: a Llama forward pass of our own kernels, replayed as CUDA graphs.

A step of T tokens and L logits rows is padded to a bucket (T_b, L_b); each bucket's launch
sequence (about ten kernels per layer) is captured once into a CUDA graph and replayed for
every later step of that size, so a step costs Python one metadata copy, one graph launch and
one copy of the sampled token ids back. A bucket's graph is captured the first time a step of
that size runs (a few ms), not up front: capturing every decode bucket at start-up would add
that to each cold start, for sizes a short-lived process may never use. Projections run as
quantised GEMV for up to 8 rows and as a tensor-core GEMM above.

`launch_sample` returns once the step is queued: the engine prepares the next step while
this one runs, and that step's decode tokens may be placeholders for this step's sampled ids,
which the embedding kernel reads on the device. Two sets of pinned buffers (step inputs,
sampled ids) take turns, each guarded by an event, so filling one never races a copy still
queued from the other.

Steps of up to 4 tokens (decode at small batches, where a step is a chain of short kernels and
each costs a launch's ~3.5 µs on an H100 whatever its work) run five kernels a layer instead of
nine: the GEMVs fuse the RMSNorm before them, and the residual add, SwiGLU, or the q/k/v biases,
RoPE and the KV cache store after them (quant_gemv.cu). A model with per-head q/k norms (Qwen3)
runs six: a GEMV thread block holds 32 rows, not the whole heads a norm needs, so its q/k/v
GEMV stores and rope.cu's prologue kernel follows. `fused_decode = False` restores the separate
kernels (for comparison).

The architectures' differences are data the kernels take: q/k/v biases and q/k norm weights
(CudaLayerWeights), the RoPE pair layout and a float64 table of each pair's radians per
position (Llama 3's frequency factors and linear scaling folded in), and the sliding window.

`batch_invariant` (docs/batch_invariance.md): every projection, whatever its rows, runs the
tensor-core GEMM's batch-invariant plan (no GEMV, no fused decode plan), and attention runs one
block per token and kv head over its keys from key 0 (no splits; or `attention_rows`' kernels,
the same bits), so a row's bits depend only on its own tokens, positions and context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from ember.errors import EmberError, ModelFormatError
from ember.gpu import warmup
from ember.gpu.array import DeviceArray
from ember.gpu.context import Context
from ember.gpu.device import Device
from ember.gpu.graph import GraphExec, StreamCapture
from ember.gpu.launch import Launch
from ember.gpu.memory import PinnedHostBuffer
from ember.gpu.stream import Event, Stream
from ember.kernels.attention import SHAPES as ATTENTION_SHAPES
from ember.kernels.attention import Attention, choose_splits, partials_size
from ember.kernels.kernel_set import KernelSet
from ember.kernels.quant_gemv import MAX_BATCH as GEMV_MAX_ROWS
from ember.kernels.quant_gemv import Output, RmsNorm
from ember.kernels.quant_mmq import MMQ_TYPES
from ember.kernels.quant_mmq import workspace_bytes as mmq_workspace_bytes
from ember.kernels.rope import RopeCache
from ember.model.backend import PendingStep, SampledStep, SamplingBatch
from ember.model.config import ModelConfig
from ember.model.cuda.activation_buffers import Activations, ActivationViews
from ember.model.cuda.step_inputs import StepArrays, StepInputs
from ember.model.cuda.weights import CudaWeights, QuantMatrix, StackedMatrix
from ember.model.forward_batch import ForwardBatch
from ember.model.rope import radians_per_position

if TYPE_CHECKING:
    from collections.abc import Callable

    from ember.model.gguf_file import GGUFFile
    from ember.model.synthetic import TypeRule

F32 = npt.NDArray[np.float32]
# Token-row buckets above 256 grow in steps of 256 (prefill chunks).
_POW2_LIMIT: Final = 256
# Share of free device memory the KV cache takes by default, and its cap.
_KV_MEMORY_SHARE: Final = 0.5
_KV_MEMORY_CAP: Final = 16 << 30
# Steps of up to this many tokens run the fused decode GEMVs. Measured on an H100
# (scripts/profile_decode.py --compare-fused, 2026-11-23), graph replay fused vs separate:
# 135M 0.771 / 0.893 ms at 1 token, 1.019 / 1.097 at 4, 1.411 / 1.409 at 8; 8B shape 2.795 /
# 2.987 at 1 but 8.943 / 7.978 at 8, where the GEMV is bound by its instructions and the
# norm's extra work in quantising x (g read and multiplied per row of x) costs more than the
# launches it saves.
_FUSED_MAX_TOKENS: Final = 4
# With `use_mmq` (off by default), K-quant products of more rows than this run the int8
# tensor-core GEMM (quant_mmq.cu), fewer the fp16 one. Measured on an H100 (2026-12-07/08): at
# 512 rows MMQ took 0.77x the fp16 GEMM's time on Q4_K's 4096-row products, 0.93x on gate/up,
# 0.94-0.98x on Q6_K (scripts/bench_quant_gemm.py --mmq); the 8B Q4_K_M shape's prefill of 512
# tokens 9,464 tok/s against 8,896, but the 1B shape's 37,975 against 39,882 (its narrower
# products leave SMs idle without split-K), and a 360-row prefill of llama.cpp's Qwen3 K-quant
# fixture moved 9.4 % of a row from NumPy's logits, past the 8.1 % the fp16 GEMM keeps within
# (scripts/profile_prefill.py [--mmq]; tests/gpu/test_cuda_kquant_families.py). At 128 rows it
# was slower but on gate/up.
_MMQ_MIN_ROWS: Final = 256
# With `attention_rows` (off by default), steps of at least this many tokens a sampled row
# (mostly prefill chunks) run attention.cu's rows kernels, which read each key and value once
# for several tokens of one sequence (the same bits as the one-token kernel). Not yet measured
# (scripts/bench_attention.py, scripts/profile_prefill.py --attention-rows).
_ROWS_MIN_TOKENS_PER_ROW: Final = 4


def buckets(limit: int) -> list[int]:
    """Sizes a step is padded to: powers of two up to 256, then multiples of 256, then limit."""
    sizes = [b for b in (1 << i for i in range(9)) if b < limit]
    sizes += list(range(2 * _POW2_LIMIT, limit, _POW2_LIMIT))
    return sorted({*sizes, limit})


def _bucket(sizes: list[int], n: int) -> int:
    for size in sizes:
        if size >= n:
            return size
    raise EmberError(f"a step of {n} exceeds the reserved {sizes[-1]}")


def unsupported(config: ModelConfig) -> str | None:
    """What of `config` the CUDA kernels cannot run, or None. Every architecture feature the
    config reads runs here; attention is compiled for some head shapes only (attention.cu)."""
    if not Attention.supports(config.head_dim, config.n_heads, config.n_kv_heads):
        shapes = ", ".join(f"{hd}/{g}" for hd, g in ATTENTION_SHAPES)
        return (
            f"attention with head_dim {config.head_dim} and {config.n_heads} q heads over "
            f"{config.n_kv_heads} kv heads (compiled head_dim/group pairs: {shapes})"
        )
    return None


def _refuse_unsupported(gguf: GGUFFile, config: ModelConfig) -> None:
    reason = unsupported(config)
    if reason is not None:
        raise ModelFormatError(
            f"{gguf.path}: the CUDA backend has no kernel for {reason} ({config.architecture}); "
            "run this model with --device cpu"
        )


class CudaLlama:
    """`ForwardBackend` and `DeviceSamplingBackend` on one GPU."""

    def __init__(
        self,
        config: ModelConfig,
        weights: CudaWeights,
        device: Device,
        context: Context,
        stream: Stream,
        kernels: KernelSet,
    ) -> None:
        reason = unsupported(config)
        if reason is not None:
            raise EmberError(f"the CUDA backend has no kernel for {reason}")
        self._config = config
        self.weights = weights
        self.device = device
        self.context = context
        self.stream = stream
        self.kernels = kernels
        self.kv_cache: DeviceArray | None = None
        self.block_size = 0
        self.inputs: StepInputs | None = None
        self.activations: Activations | None = None
        self._token_buckets: list[int] = []
        self._row_buckets: list[int] = []
        # Per bucket (tokens, rows) and whether the graph ends with the sampling kernel.
        self._graphs: dict[tuple[int, int, bool], GraphExec] = {}
        # Per bucket, the sampling kernel of a step whose masks came after its forward pass.
        self._sample_launches: dict[tuple[int, int], Launch] = {}
        # Per bucket, made once: a step must not rebuild a dozen views to find its outputs.
        self._bucket_views: dict[tuple[int, int], ActivationViews] = {}
        # Per slot (StepInputs.SLOTS): sampled ids' pinned buffer, the event after the step
        # that last used the slot, and that step until the engine has taken its tokens.
        self._ids_hosts = [PinnedHostBuffer.alloc(4 * 1024) for _ in range(StepInputs.SLOTS)]
        self._slot_events = [Event.create(timing=False) for _ in range(StepInputs.SLOTS)]
        self._slot_steps: list[_CudaStep | None] = [None] * StepInputs.SLOTS
        self._next_slot = 0
        self._logits_host: PinnedHostBuffer | None = None
        # Split-K sums and tile counters of the GEMMs (one at a time, all on self.stream): zero
        # once, and every launch leaves the counters zero.
        self._gemm_workspace = DeviceArray.empty(
            (kernels.quant_gemm.max_workspace_bytes,), np.dtype(np.uint8)
        )
        self._gemm_workspace.buffer.memset_d32(0, stream)
        # x quantised to int8 for quant_mmq, for the step's largest x: only while `use_mmq`.
        self._mmq_workspace: DeviceArray | None = None
        self._use_mmq = False  # see _MMQ_MIN_ROWS
        self._attention_rows = False  # see _ROWS_MIN_TOKENS_PER_ROW
        self._max_tokens = 0  # a step's most tokens (reserve)
        self._inv_freq = DeviceArray.from_numpy(radians_per_position(config.rope))
        self.use_graphs = True
        self._fused_decode = True
        self._batch_invariant = False

    @property
    def fused_decode(self) -> bool:
        """Whether steps of up to 4 tokens use the fused GEMVs (module docstring)."""
        return self._fused_decode

    @fused_decode.setter
    def fused_decode(self, on: bool) -> None:
        self._fused_decode = on
        self._drop_graphs()

    @property
    def use_mmq(self) -> bool:
        """Whether K-quant products of many rows run the int8 tensor-core GEMM (_MMQ_MIN_ROWS)."""
        return self._use_mmq

    @use_mmq.setter
    def use_mmq(self, on: bool) -> None:
        self._use_mmq = on
        self._drop_graphs()
        self._size_mmq_workspace()

    @property
    def attention_rows(self) -> bool:
        """Whether prefill-heavy steps run the attention rows kernels (_ROWS_MIN_TOKENS_PER_ROW)."""
        return self._attention_rows

    @attention_rows.setter
    def attention_rows(self, on: bool) -> None:
        self._attention_rows = on
        self._drop_graphs()

    def _size_mmq_workspace(self) -> None:
        """The MMQ workspace for the reserved steps' largest x, or none where MMQ cannot run."""
        if self._mmq_workspace is not None:
            self._mmq_workspace.free()
            self._mmq_workspace = None
        if self._use_mmq and self._max_tokens > _MMQ_MIN_ROWS:
            c = self._config
            widest = max(c.d_model, c.ffn_dim, c.q_dim)
            self._mmq_workspace = DeviceArray.empty(
                (mmq_workspace_bytes(self._max_tokens, widest),), np.dtype(np.uint8)
            )

    @property
    def batch_invariant(self) -> bool:
        """Whether each row is computed in an order its batch cannot change (module docstring)."""
        return self._batch_invariant

    @batch_invariant.setter
    def batch_invariant(self, on: bool) -> None:
        self._batch_invariant = on
        self._drop_graphs()

    def set_batch_invariant(self, on: bool) -> None:
        self.batch_invariant = on

    @classmethod
    def load(
        cls,
        gguf: GGUFFile,
        config: ModelConfig,
        ordinal: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> CudaLlama:
        from ember.model.cuda.weights import upload_weights

        _refuse_unsupported(gguf, config)
        return cls._open(
            config, ordinal, lambda _, stream: upload_weights(gguf, config, stream, progress)
        )

    @classmethod
    def synthetic(cls, config: ModelConfig, types: TypeRule, ordinal: int = 0) -> CudaLlama:
        """Random weights of `config`'s shapes in `types`' block types, generated on the device
        (for benchmarks)."""
        from ember.kernels.synthetic import Synthetic
        from ember.model.cuda.weights import synthetic_weights

        def generate(device: Device, stream: Stream) -> CudaWeights:
            generator = Synthetic.load(device)
            try:
                return synthetic_weights(config, types, generator, stream)
            finally:
                generator.unload()

        return cls._open(config, ordinal, generate)

    @classmethod
    def _open(
        cls,
        config: ModelConfig,
        ordinal: int,
        make_weights: Callable[[Device, Stream], CudaWeights],
    ) -> CudaLlama:
        """The GPU's primary context made current, a stream, the kernels, then the weights."""
        device = Device.get(ordinal)
        context = device.retain_primary_context()
        warmup.hand_over()  # the context is ours now; the warm-up's reference can go
        context.make_current()
        stream = Stream.create()
        kernels = KernelSet.load(device)
        return cls(config, make_weights(device, stream), device, context, stream, kernels)

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def device_name(self) -> str:
        return f"cuda:{self.device.ordinal} ({self.device.name})"

    def kv_bytes_per_token(self) -> int:
        c = self._config
        return 2 * c.n_layers * c.kv_dim * 2  # fp16 K and V

    def default_kv_cache_bytes(self, max_tokens: int) -> int:
        free, _ = self.context.memory_info()
        share = int(free * _KV_MEMORY_SHARE)
        return max(1, min(max_tokens * self.kv_bytes_per_token(), share, _KV_MEMORY_CAP))

    def default_prefill_tokens_per_step(self) -> int | None:
        return None  # a 1,024-token prefill step takes a few ms here

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        if block_size & (block_size - 1):
            raise EmberError(f"the CUDA backend needs a power-of-two block size, not {block_size}")
        c = self._config
        if self.kv_cache is not None:
            self._drop_graphs()
            self.kv_cache.free()
        shape = (c.n_layers, 2, num_blocks * block_size, c.n_kv_heads, c.head_dim)
        self.kv_cache = DeviceArray.empty(shape, np.float16)
        self.kv_cache.buffer.memset_d8(0, self.stream)
        self.block_size = block_size

    def reserve(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int) -> None:
        if self.kv_cache is None:
            raise EmberError("allocate_kv_cache must be called before reserve")
        c = self._config
        max_tokens = max(max_num_tokens, max_num_seqs)
        max_rows = min(max_num_seqs, max_tokens)
        self._drop_graphs()
        if self.inputs is not None:
            self.inputs.free()
        if self.activations is not None:
            self.activations.free()
        self._token_buckets = buckets(max_tokens)
        self._row_buckets = buckets(max_rows)
        self.inputs = StepInputs(
            max_tokens, max_rows, max_num_seqs, max_blocks_per_seq, (c.vocab_size + 31) // 32
        )
        partials = max(
            partials_size(t, c.n_heads, c.head_dim, self._splits(t)) for t in self._token_buckets
        )
        self.activations = Activations(c, max_tokens, max_rows, partials)
        self._max_tokens = max_tokens
        self._size_mmq_workspace()
        self._bucket_views.clear()
        for slot, host in enumerate(self._ids_hosts):
            if host.nbytes < 4 * max_rows:
                host.free()
                self._ids_hosts[slot] = PinnedHostBuffer.alloc(4 * max_rows)

    def forward(self, batch: ForwardBatch) -> F32:
        rows = batch.logits_indices.shape[0]
        step = self._launch(batch, None, np.arange(rows, dtype=np.int32)).wait()
        if step.host_logits is None:  # no logits rows (a prefill chunk short of the prompt end)
            return np.zeros((0, self._config.vocab_size), np.float32)
        return step.host_logits

    def launch_sample(self, batch: ForwardBatch, sampling: SamplingBatch) -> PendingStep:
        return self._launch(batch, sampling, sampling.host_rows)

    def launch_forward(self, batch: ForwardBatch, sampling: SamplingBatch) -> _CudaForward:
        if sampling.masks is not None or sampling.mask_rows is None:
            raise ValueError("launch_forward is for steps whose masks come later (mask_rows set)")
        bucket = self._start(batch, sampling, sample=False)
        return _CudaForward(self, bucket, sampling.host_rows)

    def close(self) -> None:
        self.context.make_current()
        self.stream.synchronize()
        self._drop_graphs()
        for owned in (self.inputs, self.activations, self.kv_cache, self._logits_host):
            if owned is not None:
                owned.free()
        for host in self._ids_hosts:
            host.free()
        for event in self._slot_events:
            event.destroy()
        self._gemm_workspace.free()
        if self._mmq_workspace is not None:
            self._mmq_workspace.free()
        self._inv_freq.free()
        self.weights.free()
        self.kernels.unload()
        self.stream.destroy()
        self.context.release()

    # -- one step -------------------------------------------------------------------------

    def _launch(
        self, batch: ForwardBatch, sampling: SamplingBatch | None, host_rows: npt.NDArray[np.int32]
    ) -> _CudaStep:
        return self._finish(self._start(batch, sampling, sample=True), host_rows)

    def _start(
        self, batch: ForwardBatch, sampling: SamplingBatch | None, sample: bool
    ) -> _StepBucket:
        """Fill and upload the step's inputs and queue its forward pass (and its sampling, with
        `sample`); `_finish` queues the copies back."""
        inputs = self.inputs
        if inputs is None:
            raise EmberError("reserve must be called before the first forward")
        slot = self._next_slot
        self._next_slot = (slot + 1) % StepInputs.SLOTS
        earlier = self._slot_steps[slot]
        if earlier is not None:
            earlier.settle()  # the step two launches ago: normally long done and taken
        rows = batch.logits_indices.shape[0]
        tokens_b = _bucket(self._token_buckets, batch.num_tokens)
        rows_b = min(_bucket(self._row_buckets, max(rows, 1)), tokens_b)
        inputs.fill(batch, sampling, tokens_b, rows_b, slot)
        graph = self._graph(tokens_b, rows_b, sample) if self.use_graphs else None
        inputs.upload(self.stream)
        if graph is not None:
            graph.launch(self.stream)
        else:
            plan = self._plan(tokens_b, rows_b)
            for launch in plan if sample else plan[:-1]:
                launch(self.stream)
        return _StepBucket(slot, tokens_b, rows_b, rows)

    def _sample_masked(
        self,
        bucket: _StepBucket,
        masks: npt.NDArray[np.int32],
        host_rows: npt.NDArray[np.int32],
    ) -> _CudaStep:
        """The sampling of a step `_start` queued without it, with its masks."""
        assert self.inputs is not None
        self.inputs.upload_masks(masks, bucket.slot, self.stream)
        key = (bucket.tokens, bucket.rows)
        launch = self._sample_launches.get(key)
        if launch is None:
            # The plan's last launch is the sampling kernel, over this bucket's fixed buffers.
            launch = self._sample_launches[key] = self._plan(bucket.tokens, bucket.rows)[-1]
        launch(self.stream)
        return self._finish(bucket, host_rows)

    def _finish(self, bucket: _StepBucket, host_rows: npt.NDArray[np.int32]) -> _CudaStep:
        slot, rows = bucket.slot, bucket.sampled_rows
        views = self._views(bucket.tokens, bucket.rows)
        ids = self._ids_hosts[slot].array(np.int32, (rows,))
        if rows:
            views.sampled.buffer.view(0, 4 * rows).copy_to_host(ids, self.stream)
        logits = self._copy_logits(views, host_rows) if host_rows.shape[0] else None
        event = self._slot_events[slot]
        event.record(self.stream)
        step = self._slot_steps[slot] = _CudaStep(event, ids, logits)
        return step

    def _copy_logits(self, views: ActivationViews, host_rows: npt.NDArray[np.int32]) -> F32:
        """Queue the copy of only the `host_rows` rows of the logits (a decode batch with one
        logprobs request must not bring back every row: 0.5 MB per row for a 128k vocabulary),
        one copy per run of consecutive rows. One pinned buffer: a step with host rows must be
        waited for before the next one is launched (as the engine does)."""
        vocab = self._config.vocab_size
        count = host_rows.shape[0]
        row_bytes = 4 * vocab
        if self._logits_host is None or self._logits_host.nbytes < count * row_bytes:
            if self._logits_host is not None:
                self._logits_host.free()
            assert self.inputs is not None
            self._logits_host = PinnedHostBuffer.alloc(self.inputs.max_rows * row_bytes)
        out: F32 = self._logits_host.array(np.float32, (count, vocab))
        rows = host_rows.tolist()
        start = 0
        for end in range(1, count + 1):
            if end == count or rows[end] != rows[end - 1] + 1:
                first, run = rows[start], end - start
                source = views.logits.buffer.view(first * row_bytes, run * row_bytes)
                source.copy_to_host(out[start:end], self.stream)
                start = end
        return out

    def _views(self, tokens: int, rows: int) -> ActivationViews:
        views = self._bucket_views.get((tokens, rows))
        if views is None:
            assert self.activations is not None
            views = self._bucket_views[tokens, rows] = self.activations.views(tokens, rows)
        return views

    def _graph(self, tokens: int, rows: int, sample: bool) -> GraphExec:
        """The bucket's forward pass as a graph, ending with the sampling kernel (`sample`) or
        without it (a step whose masks come later samples with a launch of its own)."""
        graph = self._graphs.get((tokens, rows, sample))
        if graph is None:
            plan = self._plan(tokens, rows)
            with StreamCapture(self.stream) as capture:
                for launch in plan if sample else plan[:-1]:
                    launch(self.stream)
            graph = capture.graph.instantiate()
            capture.graph.destroy()
            self._graphs[tokens, rows, sample] = graph
        return graph

    def _drop_graphs(self) -> None:
        for graph in self._graphs.values():
            graph.destroy()
        self._graphs.clear()
        self._sample_launches.clear()

    def _splits(self, tokens: int) -> int:
        if self._batch_invariant:
            # A token's keys in one block, in 256-key tiles from key 0: its order then follows
            # from its context alone (choose_splits follows the grid).
            return 1
        c = self._config
        return choose_splits(
            tokens, c.n_kv_heads, self.device.multiprocessor_count, c.context_length
        )

    # -- the forward pass as a list of launches --------------------------------------------

    def _plan(self, tokens: int, rows: int) -> list[Launch]:
        if self._fused_decode and not self._batch_invariant and tokens <= _FUSED_MAX_TOKENS:
            return self._fused_plan(tokens, rows)
        assert self.inputs is not None and self.kv_cache is not None
        c, w, k = self._config, self.weights, self.kernels
        a = self._views(tokens, rows)
        s = self.inputs.arrays(tokens, rows)
        eps = c.rms_eps
        plan = [
            self._embedding(s, a),
            k.norm.rms_norm_launch(a.residual, w.layers[0].attn_norm, a.x, eps),
        ]
        for i, layer in enumerate(w.layers):
            next_norm = w.layers[i + 1].attn_norm if i + 1 < len(w.layers) else w.output_norm
            plan += self._attention_block(i, layer.wqkv, layer.wo, a, s)
            plan.append(k.norm.add_rms_norm_launch(a.delta, a.residual, layer.ffn_norm, a.x, eps))
            plan += self._stacked_linear(a.x, layer.w_gate_up, a.gate_up)
            plan.append(k.elementwise.silu_mul_launch(a.gate_up, a.act))
            plan += self._linear(a.act, layer.w_down, a.delta)
            plan.append(k.norm.add_rms_norm_launch(a.delta, a.residual, next_norm, a.x, eps))
        plan.append(k.elementwise.gather_rows_launch(a.x, s.logits_rows, a.last))
        plan += self._linear(a.last, w.lm_head, a.logits)
        plan.append(k.sampling.sample_launch(a.logits, s.params, a.sampled, masks=s.masks))
        return plan

    def _fused_plan(self, tokens: int, rows: int) -> list[Launch]:
        """Five kernels a layer: the residual stream stays in `a.residual`, which the GEMVs
        normalise as they read it and add into as they write it. A GEMV that adds into it also
        writes the sums of squares of its 32-column groups, from which the next GEMV's norm
        takes the rows' scales (the first layer's sums them itself, after the embedding)."""
        assert self.inputs is not None
        c, w, k = self._config, self.weights, self.kernels
        gemv = k.quant_gemv.gemv_launch
        a = self._views(tokens, rows)
        s = self.inputs.arrays(tokens, rows)
        eps = c.rms_eps
        plan = [self._embedding(s, a)]
        sums = a.norm_partials
        for i, layer in enumerate(w.layers):
            wo, down = layer.wo, layer.w_down
            plan += self._fused_qkv(i, RmsNorm(layer.attn_norm, eps, sums if i else None), a, s)
            plan += [
                self._attention(i, tokens, a, s),
                gemv(
                    wo.data, wo.quant, a.attn, a.residual, output=Output.ADD, sums_of_squares=sums
                ),
            ]
            plan += self._fused_gate_up(layer.w_gate_up, RmsNorm(layer.ffn_norm, eps, sums), a)
            plan += [
                gemv(
                    down.data,
                    down.quant,
                    a.act,
                    a.residual,
                    output=Output.ADD,
                    sums_of_squares=sums if i + 1 < len(w.layers) else None,
                ),
            ]
        head = w.lm_head
        plan.append(
            k.norm.gather_rms_norm_launch(a.residual, s.logits_rows, w.output_norm, a.last, eps)
        )
        plan.append(gemv(head.data, head.quant, a.last, a.logits))
        plan.append(k.sampling.sample_launch(a.logits, s.params, a.sampled, masks=s.masks))
        return plan

    def _fused_qkv(self, i: int, norm: RmsNorm, a: ActivationViews, s: StepArrays) -> list[Launch]:
        """Layer i's normed q/k/v projection and attention prologue: one GEMV (one a part of
        q|k|v stored in a type of its own), or (q/k norms, which need whole heads) the GEMVs and
        rope.cu's prologue kernel."""
        layer = self.weights.layers[i]
        rope = self._rope_cache(i, s)
        gemv = self.kernels.quant_gemv.gemv_launch
        if layer.qk_norm is None:
            return [
                gemv(
                    part.data,
                    part.quant,
                    a.residual,
                    a.qkv,
                    norm=norm,
                    output=Output.ROPE,
                    rope=rope,
                    y_at=first,
                )
                for first, part in layer.wqkv.placed()
            ]
        return [
            *(
                gemv(part.data, part.quant, a.residual, a.qkv, norm=norm, y_at=first)
                for first, part in layer.wqkv.placed()
            ),
            self.kernels.rope.qkv_cache_launch(a.qkv, rope),
        ]

    def _fused_gate_up(
        self, gate_up: StackedMatrix, norm: RmsNorm, a: ActivationViews
    ) -> list[Launch]:
        """The normed gate/up projection and SwiGLU: one GEMV, or (gate and up stored in
        different types) a GEMV each and the SwiGLU kernel."""
        gemv = self.kernels.quant_gemv.gemv_launch
        single = gate_up.single
        if single is not None:
            return [
                gemv(single.data, single.quant, a.residual, a.act, norm=norm, output=Output.SWIGLU)
            ]
        return [
            *(
                gemv(part.data, part.quant, a.residual, a.gate_up, norm=norm, y_at=first)
                for first, part in gate_up.placed()
            ),
            self.kernels.elementwise.silu_mul_launch(a.gate_up, a.act),
        ]

    def _embedding(self, s: StepArrays, a: ActivationViews) -> Launch:
        """The token rows into the residual stream; placeholders read the previous step's ids."""
        assert self.activations is not None
        w = self.weights
        return self.kernels.embedding.lookup_launch(
            w.token_embd, w.token_embd_type, s.tokens, a.residual, self.activations.sampled_ids()
        )

    def _attention(self, layer: int, tokens: int, a: ActivationViews, s: StepArrays) -> Launch:
        c = self._config
        k_cache, v_cache = self._layer_cache(layer)
        arrays = (a.qkv, k_cache, v_cache, s.positions, s.token_seq, s.block_tables, a.attn)
        attention = self.kernels.attention
        splits = self._splits(tokens)
        if (
            self._attention_rows
            and splits == 1
            and c.sliding_window is None
            and tokens >= _ROWS_MIN_TOKENS_PER_ROW * a.last.shape[0]
            and attention.rows_per_block(c.head_dim, c.n_heads // c.n_kv_heads)
        ):
            return attention.rows_launch(*arrays, self.block_size)
        return attention.attention_launch(
            *arrays,
            self.block_size,
            splits,
            a.partials,
            a.counters,
            window=c.sliding_window,
        )

    def _attention_block(
        self, layer: int, wqkv: StackedMatrix, wo: QuantMatrix, a: ActivationViews, s: StepArrays
    ) -> list[Launch]:
        tokens = a.qkv.shape[0]
        return [
            *self._stacked_linear(a.x, wqkv, a.qkv),
            self.kernels.rope.qkv_cache_launch(a.qkv, self._rope_cache(layer, s)),
            self._attention(layer, tokens, a, s),
            *self._linear(a.attn, wo, a.delta),
        ]

    def _rope_cache(self, layer: int, s: StepArrays) -> RopeCache:
        """The attention prologue after layer `layer`'s q/k/v projection: its biases and q/k
        norms, RoPE in the model's layout, the KV-cache store."""
        c = self._config
        k_cache, v_cache = self._layer_cache(layer)
        weights = self.weights.layers[layer]
        return RopeCache(
            s.positions,
            s.slots,
            k_cache,
            v_cache,
            c.n_heads,
            self._inv_freq,
            neox=c.rope.style == "halves",
            bias=weights.bqkv,
            qk_norm=weights.qk_norm,
            eps=c.rms_eps,
        )

    def _layer_cache(self, layer: int) -> tuple[DeviceArray, DeviceArray]:
        assert self.kv_cache is not None
        _, _, slots, heads, dim = self.kv_cache.shape
        per = slots * heads * dim * 2
        base = 2 * layer * per
        shape = (slots, heads, dim)
        return (
            self.kv_cache.view(shape, np.float16, base),
            self.kv_cache.view(shape, np.float16, base + per),
        )

    def _stacked_linear(self, x: DeviceArray, m: StackedMatrix, y: DeviceArray) -> list[Launch]:
        """y = x @ W.T over a stack: one product, or one a part, each into its columns of y."""
        single = m.single
        if single is not None:
            return self._linear(x, single, y)
        launches: list[Launch] = []
        quantised = False  # x is in the MMQ workspace already (an earlier part put it there)
        for first, part in m.placed():
            launches += self._linear(x, part, y, first, quantised)
            quantised = quantised or self._takes_mmq(x, part)
        return launches

    def _takes_mmq(self, x: DeviceArray, m: QuantMatrix) -> bool:
        """Whether y = x @ W.T runs the int8 tensor-core GEMM (use_mmq, _MMQ_MIN_ROWS)."""
        return (
            self._mmq_workspace is not None
            and not self._batch_invariant
            and x.shape[0] > _MMQ_MIN_ROWS
            and m.quant in MMQ_TYPES
            and self.kernels.quant_mmq.runs(m.quant)
        )

    def _linear(
        self,
        x: DeviceArray,
        m: QuantMatrix,
        y: DeviceArray,
        y_at: int | None = None,
        quantised: bool = False,
    ) -> list[Launch]:
        """The launches of y = x @ W.T: the GEMV's, the GEMM's, or (`_takes_mmq`) x's int8
        quantisation then the int8 GEMM's; `quantised`: x is in the MMQ workspace already, so
        only the GEMM is launched."""
        if not self._takes_mmq(x, m):
            return [self._gemv_or_gemm(x, m, y, y_at)]
        workspace = self._mmq_workspace
        assert workspace is not None  # _takes_mmq
        mmq = self.kernels.quant_mmq
        gemm = mmq.gemm_launch(m.data, m.quant, x, y, workspace, y_at=y_at)
        return [gemm] if quantised else [mmq.quantize_launch(x, workspace), gemm]

    def _gemv_or_gemm(
        self, x: DeviceArray, m: QuantMatrix, y: DeviceArray, y_at: int | None
    ) -> Launch:
        if self._batch_invariant:
            # The GEMV's int8 x and its per-tier warps sum other terms in other orders than the
            # GEMM: one kernel family for every row count.
            return self.kernels.quant_gemm.gemm_launch(
                m.data, m.quant, x, y, workspace=self._gemm_workspace, invariant=True, y_at=y_at
            )
        if x.shape[0] <= GEMV_MAX_ROWS:
            return self.kernels.quant_gemv.gemv_launch(m.data, m.quant, x, y, y_at=y_at)
        return self.kernels.quant_gemm.gemm_launch(
            m.data, m.quant, x, y, workspace=self._gemm_workspace, y_at=y_at
        )


@dataclass(frozen=True, slots=True)
class _StepBucket:
    """A step `_start` queued: its inputs' slot, its bucket, and its rows that sample."""

    slot: int
    tokens: int
    rows: int
    sampled_rows: int


class _CudaForward:
    """A step whose forward pass is queued and whose sampling waits for its token masks."""

    __slots__ = ("_backend", "_bucket", "_host_rows", "_step")

    def __init__(
        self, backend: CudaLlama, bucket: _StepBucket, host_rows: npt.NDArray[np.int32]
    ) -> None:
        self._backend = backend
        self._bucket = bucket
        self._host_rows = host_rows
        self._step: _CudaStep | None = None

    def sample(self, masks: npt.NDArray[np.int32]) -> PendingStep:
        if self._step is not None:
            raise EmberError("this step's sampling is already queued")
        self._step = self._backend._sample_masked(self._bucket, masks, self._host_rows)
        return self._step


class _CudaStep:
    """A launched step: its event, and the pinned arrays its ids (and logits) are copied to."""

    __slots__ = ("_event", "_ids", "_logits", "_result")

    def __init__(self, event: Event, ids: npt.NDArray[np.int32], logits: F32 | None) -> None:
        self._event = event
        self._ids = ids
        self._logits = logits
        self._result: SampledStep | None = None

    def settle(self) -> None:
        """Wait for the step and copy its results out of the pinned buffers (which the next
        launch of this slot reuses)."""
        if self._result is None:
            self._event.synchronize()
            logits = None if self._logits is None else self._logits.copy()
            self._result = SampledStep(token_ids=self._ids.copy(), host_logits=logits)

    def wait(self) -> SampledStep:
        self.settle()
        assert self._result is not None
        return self._result
