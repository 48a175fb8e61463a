"""A step's metadata on its way to the GPU: one pinned buffer, one async copy, fixed addresses.

Every per-step input (token ids, positions, cache slots, each token's sequence, the rows whose
logits are wanted, their sampling parameters, the block tables) lives at a fixed offset of one
page-locked host buffer, mirrored by one device buffer. A step writes the host side, then one
cuMemcpyHtoDAsync moves the used prefix; the captured graphs read the device side at addresses
that never change. Rows beyond the step's own (a bucket's padding) are set to values the
kernels treat as empty: token -1 (a zero embedding), position -1 (attends to nothing), slot -1
(stores nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ember.gpu.array import DeviceArray
from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
from ember.gpu.stream import Stream
from ember.kernels.sampling import ROW_PARAMS_DTYPE
from ember.model.backend import SamplingBatch
from ember.model.forward_batch import ForwardBatch

_I32: Final = np.dtype(np.int32)
_PARAM_INTS: Final = ROW_PARAMS_DTYPE.itemsize // 4


@dataclass(frozen=True, slots=True)
class StepArrays:
    """Device views of the inputs for a bucket of `tokens` rows and `rows` logits rows."""

    tokens: DeviceArray  # int32 [T]
    positions: DeviceArray  # int32 [T]
    slots: DeviceArray  # int32 [T]
    token_seq: DeviceArray  # int32 [T]
    logits_rows: DeviceArray  # int32 [L]
    params: DeviceArray  # ROW_PARAMS_DTYPE [L]
    block_tables: DeviceArray  # int32 [max_seqs, table_width]


class StepInputs:
    """Owns the pinned and device metadata buffers of a backend's steps."""

    def __init__(self, max_tokens: int, max_rows: int, max_seqs: int, table_width: int) -> None:
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.max_seqs = max_seqs
        self.table_width = table_width
        t, r = max_tokens, max_rows
        self._tokens = 0
        self._positions = t
        self._slots = 2 * t
        self._token_seq = 3 * t
        self._rows = 4 * t
        self._params = 4 * t + r
        self._tables = self._params + r * _PARAM_INTS
        total = self._tables + max_seqs * table_width
        self.host = PinnedHostBuffer.alloc(4 * total)
        self.device = DeviceBuffer.alloc(4 * total)
        self._ints = self.host.array(np.int32)
        self._params_view = self._ints[self._params : self._tables].view(ROW_PARAMS_DTYPE)
        self._tables_view = self._ints[self._tables :].reshape(max_seqs, table_width)
        self._used = 4 * self._tables

    def arrays(self, tokens: int, rows: int) -> StepArrays:
        def view(offset: int, shape: tuple[int, ...], dtype: Any = _I32) -> DeviceArray:
            nbytes = max(int(np.prod(shape)), 1) * np.dtype(dtype).itemsize
            return DeviceArray(self.device.view(4 * offset, nbytes), shape, np.dtype(dtype))

        return StepArrays(
            tokens=view(self._tokens, (tokens,)),
            positions=view(self._positions, (tokens,)),
            slots=view(self._slots, (tokens,)),
            token_seq=view(self._token_seq, (tokens,)),
            logits_rows=view(self._rows, (rows,)),
            params=view(self._params, (rows,), ROW_PARAMS_DTYPE),
            block_tables=view(self._tables, (self.max_seqs, self.table_width)),
        )

    def fill(
        self, batch: ForwardBatch, sampling: SamplingBatch | None, tokens: int, rows: int
    ) -> None:
        """Write `batch` padded to `tokens` rows and `rows` logits rows into the host buffer."""
        n, s = batch.num_tokens, batch.num_seqs
        num_rows = batch.logits_indices.shape[0]
        if n > tokens or num_rows > rows or s > self.max_seqs:
            raise ValueError(
                f"a batch of {n} tokens, {num_rows} logits rows and {s} sequences does not fit "
                f"a bucket of {tokens} tokens and {rows} rows ({self.max_seqs} sequences)"
            )
        width = batch.block_tables.shape[1]
        if width > self.table_width:
            raise ValueError(f"block tables of {width} blocks exceed {self.table_width}")
        self._put(self._tokens, batch.token_ids, tokens, -1)
        self._put(self._positions, batch.positions, tokens, -1)
        self._put(self._slots, batch.slot_mapping, tokens, -1)
        seq_of_token = np.repeat(np.arange(s, dtype=np.int32), batch.query_lens)
        self._put(self._token_seq, seq_of_token, tokens, 0)
        self._put(self._rows, batch.logits_indices, rows, 0)
        params = self._params_view
        params[:rows] = np.zeros((), ROW_PARAMS_DTYPE)  # greedy for padding rows
        if sampling is not None and num_rows:
            p = params[:num_rows]
            p["temperature"] = sampling.temperature
            p["top_k"] = sampling.top_k
            p["top_p"] = sampling.top_p
            p["min_p"] = sampling.min_p
            p["seed_lo"] = (sampling.seeds & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            p["seed_hi"] = (sampling.seeds >> np.uint64(32)).astype(np.uint32)
            p["step"] = sampling.steps
        self._tables_view[:s, :width] = batch.block_tables
        self._used = 4 * (self._tables + s * self.table_width)

    def upload(self, stream: Stream) -> None:
        """Queue the copy of what `fill` wrote; the host side must not change until it ran."""
        src = self._ints[: self._used // 4]
        self.device.copy_from_host(src, stream)

    def _put(self, offset: int, values: npt.NDArray[Any], size: int, pad: int) -> None:
        count = values.shape[0]
        self._ints[offset : offset + count] = values
        self._ints[offset + count : offset + size] = pad

    def free(self) -> None:
        self.host.free()
        self.device.free()
