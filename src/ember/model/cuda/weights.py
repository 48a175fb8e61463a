"""Llama weights in device memory, as GGUF stores them: quantised blocks are read in place.

All tensors live in one device allocation (the arena), each at a 256-byte aligned offset. They
are copied from the memory-mapped GGUF through two pinned staging buffers in turn, so a copy
engine transfer of one chunk overlaps the host's copy of the next out of the page cache; no
tensor becomes a Python object on the way. The q/k/v projections, and gate/up, are stored
back to back, which makes them one [q + 2 kv, d] (or [2 ffn, d]) matrix for one GEMV/GEMM; so
are the q/k/v biases (one [q + 2 kv] vector) and the q and k norms ([2, head_dim]). Where the
stacked tensors are stored in different block types (llama.cpp's Q4_K_M files keep some layers'
attn_v in Q6_K beside Q4_K q and k), each run of one type is a matrix of its own, and its
product writes its columns of the one output (`StackedMatrix`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ember.errors import ModelFormatError
from ember.gpu.array import DeviceArray
from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
from ember.gpu.stream import Event, Stream
from ember.kernels.quant_gemv import QuantType
from ember.kernels.synthetic import Synthetic
from ember.model.config import ModelConfig

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

_ALIGN: Final = 256
_STAGING_BYTES: Final = 32 << 20
LINEAR_TYPES: Final = {GGMLQuantizationType[q.name]: q for q in QuantType}
# What the kernels read as stored: float tensors (norms, an embedding) and LINEAR_TYPES.
_DEVICE_TYPES: Final = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, *LINEAR_TYPES)


@dataclass(frozen=True, slots=True)
class QuantMatrix:
    """A [rows, cols] weight matrix as raw quantised blocks (uint8 [rows, row bytes])."""

    data: DeviceArray
    quant: QuantType
    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class StackedMatrix:
    """Weight matrices stacked row-wise whose products are one output row (q|k|v, gate|up): one
    part where the tensors share a block type, else one per run of tensors that do."""

    parts: tuple[QuantMatrix, ...]

    @property
    def single(self) -> QuantMatrix | None:
        """The one matrix, where every tensor is stored in one block type."""
        return self.parts[0] if len(self.parts) == 1 else None

    def placed(self) -> Iterator[tuple[int, QuantMatrix]]:
        """Each part with its first row in the stack: the output column its product starts at."""
        first = 0
        for part in self.parts:
            yield first, part
            first += part.rows


@dataclass(frozen=True, slots=True)
class CudaLayerWeights:
    attn_norm: DeviceArray  # float32 [d]
    wqkv: StackedMatrix  # [q_dim + 2 kv_dim, d]
    wo: QuantMatrix  # [d, q_dim]
    ffn_norm: DeviceArray
    w_gate_up: StackedMatrix  # [2 ffn, d]
    w_down: QuantMatrix  # [d, ffn]
    bqkv: DeviceArray | None = None  # float32 [q_dim + 2 kv_dim] (Qwen2), or None
    qk_norm: DeviceArray | None = None  # float32 [2, head_dim]: q heads' then k's (Qwen3)


@dataclass(frozen=True, slots=True)
class CudaWeights:
    arena: DeviceBuffer
    token_embd: DeviceArray  # raw bytes [vocab, row bytes] (or float rows)
    token_embd_type: GGMLQuantizationType
    layers: tuple[CudaLayerWeights, ...]
    output_norm: DeviceArray
    lm_head: QuantMatrix  # [vocab, d]; the embedding's own bytes when tied

    @property
    def nbytes(self) -> int:
        return self.arena.nbytes

    def free(self) -> None:
        self.arena.free()


@dataclass(frozen=True, slots=True)
class _Part:
    """One tensor to place: its name(s) (several are stacked row-wise) and expected shape:
    rows[i] rows of `cols` for names[i]; a norm is one row, [cols]; cols 1 means 1-D tensors
    of rows[i] values (biases)."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    cols: int

    @property
    def vector(self) -> bool:
        """Float32 values (norms, biases), not a matrix of blocks."""
        return self.cols == 1 or all(r == 1 for r in self.rows)

    def shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """Each tensor's name and GGUF shape (NumPy order: [rows, cols], or [n] for a vector)."""
        for name, rows in zip(self.names, self.rows, strict=True):
            if self.cols == 1:
                yield name, (rows,)
            else:
                yield name, (rows, self.cols) if rows > 1 else (self.cols,)

    def runs(
        self, kinds: list[GGMLQuantizationType]
    ) -> Iterator[tuple[_Part, GGMLQuantizationType]]:
        """The part cut where its tensors' types (`kinds`, one each) change: each run is
        placed, and multiplied, on its own."""
        start = 0
        for end in range(1, len(self.names) + 1):
            if end == len(self.names) or kinds[end] != kinds[start]:
                run = _Part(self.names[start:end], self.rows[start:end], self.cols)
                yield run, kinds[start]
                start = end


def _parts(config: ModelConfig) -> Iterator[_Part]:
    c = config
    yield _Part(("token_embd.weight",), (c.vocab_size,), c.d_model)
    for i in range(c.n_layers):
        p = f"blk.{i}."
        yield _Part((p + "attn_norm.weight",), (1,), c.d_model)
        qkv = (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
        yield _Part(qkv, (c.q_dim, c.kv_dim, c.kv_dim), c.d_model)
        if c.qkv_bias:
            biases = (p + "attn_q.bias", p + "attn_k.bias", p + "attn_v.bias")
            yield _Part(biases, (c.q_dim, c.kv_dim, c.kv_dim), 1)
        if c.qk_norm:
            yield _Part((p + "attn_q_norm.weight", p + "attn_k_norm.weight"), (1, 1), c.head_dim)
        yield _Part((p + "attn_output.weight",), (c.d_model,), c.q_dim)
        yield _Part((p + "ffn_norm.weight",), (1,), c.d_model)
        yield _Part((p + "ffn_gate.weight", p + "ffn_up.weight"), (c.ffn_dim, c.ffn_dim), c.d_model)
        yield _Part((p + "ffn_down.weight",), (c.d_model,), c.ffn_dim)
    yield _Part(("output_norm.weight",), (1,), c.d_model)
    if not c.tied_embeddings:
        yield _Part(("output.weight",), (c.vocab_size,), c.d_model)


def _row_bytes(kind: GGMLQuantizationType, cols: int) -> int:
    if kind is GGMLQuantizationType.F32:
        return 4 * cols
    if kind is GGMLQuantizationType.F16:
        return 2 * cols
    if kind in LINEAR_TYPES:
        return LINEAR_TYPES[kind].row_bytes(cols)
    raise ModelFormatError(f"tensor type {kind.name} is not supported by the CUDA backend")


class _Uploader:
    """Copies host byte ranges to device addresses through two pinned staging buffers."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.staging = [PinnedHostBuffer.alloc(_STAGING_BYTES) for _ in range(2)]
        self.views = [s.array(np.uint8) for s in self.staging]
        self.done = [Event.create(timing=False) for _ in range(2)]
        self.used = [False, False]
        self.turn = 0

    def copy(self, src: npt.NDArray[np.uint8], dst: DeviceBuffer) -> None:
        for start in range(0, src.nbytes, _STAGING_BYTES):
            chunk = src[start : start + _STAGING_BYTES]
            i = self.turn
            if self.used[i]:
                self.done[i].synchronize()
            self.views[i][: chunk.nbytes] = chunk
            dst.view(start, chunk.nbytes).copy_from_host(self.views[i][: chunk.nbytes], self.stream)
            self.done[i].record(self.stream)
            self.used[i] = True
            self.turn = 1 - i

    def close(self) -> None:
        self.stream.synchronize()
        for s in self.staging:
            s.free()
        for e in self.done:
            e.destroy()


def upload_weights(
    gguf: GGUFFile,
    config: ModelConfig,
    stream: Stream,
    progress: Callable[[int], None] | None = None,
) -> CudaWeights:
    """Copy every tensor the forward pass needs into one device allocation."""
    runs: list[tuple[_Part, GGMLQuantizationType]] = []
    for part in _parts(config):
        kinds = [_tensor_type(gguf, name) for name in part.names]
        if len(set(kinds)) > 1 and (part.vector or not set(kinds) <= set(LINEAR_TYPES)):
            raise ModelFormatError(
                f"{gguf.path}: {', '.join(part.names)} are stored in different types "
                f"({', '.join(k.name for k in kinds)}); the CUDA backend reads stacked tensors "
                f"of different types only as matrices of {', '.join(t.name for t in LINEAR_TYPES)}"
            )
        _check_shapes(gguf, part)
        runs += part.runs(kinds)
    arena, arrays = _layout(runs)
    uploader = _Uploader(stream)
    try:
        layers_done = 0
        for view, _, part in arrays:
            at = 0
            for name in part.names:
                raw = np.ascontiguousarray(gguf.raw(name)).reshape(-1).view(np.uint8)
                uploader.copy(raw, view.buffer.view(at, raw.nbytes))
                at += raw.nbytes
            if progress is not None and part.names[0].endswith("ffn_down.weight"):
                layers_done += 1
                progress(layers_done)
    except BaseException:
        uploader.close()
        arena.free()
        raise
    uploader.close()
    return _assemble(arena, arrays, config)


def synthetic_weights(
    config: ModelConfig,
    types: Callable[[tuple[str, ...], ModelConfig], str],
    synthetic: Synthetic,
    stream: Stream,
    seed: int = 0,
) -> CudaWeights:
    """Random weights of `config`'s shapes made on the device: each matrix in the block type
    `types` names for each tensor (a QuantType name; model/synthetic.py's TypeRule),
    norms (and biases) near 1."""
    to_gguf = {v: k for k, v in LINEAR_TYPES.items()}
    runs = []
    for part in _parts(config):
        if part.vector:
            runs.append((part, GGMLQuantizationType.F32))
        else:
            kinds = [to_gguf[QuantType[types((name,), config)]] for name in part.names]
            runs += part.runs(kinds)
    arena, arrays = _layout(runs)
    for i, (view, kind, part) in enumerate(arrays):
        if kind is GGMLQuantizationType.F32:
            synthetic.fill_f32(view, seed + i, 0.9, 1.1, stream)
        else:
            # Scales like a trained model's at this fan-in keep activations finite.
            scale = 0.5 / math.sqrt(part.cols)
            synthetic.fill_quant(view, LINEAR_TYPES[kind], seed + i, scale, stream)
    stream.synchronize()
    return _assemble(arena, arrays, config)


def tensor_shapes(config: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor the CUDA forward pass reads for `config`, by GGUF name, with its shape."""
    for part in _parts(config):
        yield from part.shapes()


def _check_shapes(gguf: GGUFFile, part: _Part) -> None:
    for name, expected in part.shapes():
        shape = gguf.tensors[name].shape
        if shape != expected and not (expected == (part.cols,) and shape == (1, part.cols)):
            raise ModelFormatError(
                f"{gguf.path}: tensor {name!r} has shape {shape}, expected {expected}"
            )


def _layout(
    runs: list[tuple[_Part, GGMLQuantizationType]],
) -> tuple[DeviceBuffer, list[tuple[DeviceArray, GGMLQuantizationType, _Part]]]:
    """One arena for all parts (each a run of one type), each at an aligned offset, and a
    typed view of each."""
    offsets = []
    total = 0
    for part, kind in runs:
        offsets.append(total)
        total += -(-sum(part.rows) * _row_bytes(kind, part.cols) // _ALIGN) * _ALIGN
    arena = DeviceBuffer.alloc(total)
    arrays = []
    for (part, kind), start in zip(runs, offsets, strict=True):
        nbytes = sum(part.rows) * _row_bytes(kind, part.cols)
        view = DeviceArray(arena.view(start, nbytes), _shape(kind, part), _dtype(kind))
        arrays.append((view, kind, part))
    return arena, arrays


def _tensor_type(gguf: GGUFFile, name: str) -> GGMLQuantizationType:
    if not gguf.has_tensor(name):
        raise ModelFormatError(f"{gguf.path}: missing tensor {name!r}")
    kind = GGMLQuantizationType(gguf.tensors[name].ggml_type)
    if kind not in _DEVICE_TYPES:
        readable = ", ".join(t.name for t in _DEVICE_TYPES)
        raise ModelFormatError(
            f"{gguf.path}: tensor {name!r} is {kind.name}, which the CUDA backend does not "
            f"read yet (it reads {readable}); run this model with --device cpu"
        )
    return kind


def _shape(kind: GGMLQuantizationType, part: _Part) -> tuple[int, ...]:
    rows = sum(part.rows)
    if kind in LINEAR_TYPES:
        return (rows, _row_bytes(kind, part.cols))
    if part.cols == 1:
        return (rows,)
    return (rows, part.cols) if rows > 1 else (part.cols,)


def _dtype(kind: GGMLQuantizationType) -> np.dtype[Any]:
    if kind is GGMLQuantizationType.F32:
        return np.dtype(np.float32)
    if kind is GGMLQuantizationType.F16:
        return np.dtype(np.float16)
    return np.dtype(np.uint8)


def _assemble(
    arena: DeviceBuffer,
    arrays: list[tuple[DeviceArray, GGMLQuantizationType, _Part]],
    config: ModelConfig,
) -> CudaWeights:
    # Each run by its first tensor's name: a stack's runs are the names of it found here.
    placed = {part.names[0]: (array, kind, part) for array, kind, part in arrays}

    def matrix(name: str) -> QuantMatrix:
        array, kind, part = placed[name]
        if kind not in LINEAR_TYPES:
            raise ModelFormatError(
                f"{name} is {kind.name}; the CUDA backend's matrix kernels take "
                f"{', '.join(k.name for k in LINEAR_TYPES)}"
            )
        return QuantMatrix(array, LINEAR_TYPES[kind], sum(part.rows), part.cols)

    def stacked(*names: str) -> StackedMatrix:
        return StackedMatrix(tuple(matrix(name) for name in names if name in placed))

    def vector(name: str) -> DeviceArray:
        array, kind, _ = placed[name]
        if kind is not GGMLQuantizationType.F32:
            raise ModelFormatError(f"{name} is {kind.name}, expected F32")
        return array

    def optional(name: str) -> DeviceArray | None:
        return vector(name) if name in placed else None

    layers = []
    for layer in range(config.n_layers):
        p = f"blk.{layer}."
        layers.append(
            CudaLayerWeights(
                attn_norm=vector(p + "attn_norm.weight"),
                wqkv=stacked(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"),
                wo=matrix(p + "attn_output.weight"),
                ffn_norm=vector(p + "ffn_norm.weight"),
                w_gate_up=stacked(p + "ffn_gate.weight", p + "ffn_up.weight"),
                w_down=matrix(p + "ffn_down.weight"),
                bqkv=optional(p + "attn_q.bias"),
                qk_norm=optional(p + "attn_q_norm.weight"),
            )
        )
    embd, embd_kind, _ = placed["token_embd.weight"]
    return CudaWeights(
        arena=arena,
        token_embd=embd,
        token_embd_type=embd_kind,
        layers=tuple(layers),
        output_norm=vector("output_norm.weight"),
        lm_head=matrix("token_embd.weight" if config.tied_embeddings else "output.weight"),
    )
