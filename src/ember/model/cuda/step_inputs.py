"""A step's metadata on its way to the GPU: one pinned buffer, one async copy, fixed addresses.

Every per-step input (token ids, positions, cache slots, each token's sequence, the rows whose
logits are wanted, their sampling parameters, the block tables) lives at a fixed offset of one
page-locked host buffer, mirrored by one device buffer. A step writes the host side, then one
cuMemcpyHtoDAsync moves the used prefix; the captured graphs read the device side at addresses
that never change. Rows beyond the step's own (a bucket's padding) are set to values the
kernels treat as empty: token -1 (a zero embedding), position -1 (attends to nothing), slot -1
(stores nothing). Structured outputs' token masks have a pinned and a device buffer of their
own, of which a step copies only the rows it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ember.gpu.array import DeviceArray
from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
from ember.gpu.stream import Stream
from ember.kernels.sampling import ROW_PARAMS_DTYPE, row_params
from ember.model.backend import SamplingBatch
from ember.model.forward_batch import ForwardBatch

_I32: Final = np.dtype(np.int32)
_PARAM_INTS: Final = ROW_PARAMS_DTYPE.itemsize // 4
_PADDING_ROW: Final = row_params(0.0, 0, 1.0, 0.0, 0, 0, -1)[0]


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
    masks: DeviceArray  # int32 [max_rows, mask_words]: the rows `params`' mask_row name


class StepLayout:
    """Where each input lies in the int32 words of the step buffer, and how a batch fills them.

    Works on any int32 array of `total` words: the pinned buffer in a backend, a plain array in
    tests.
    """

    def __init__(self, max_tokens: int, max_rows: int, max_seqs: int, table_width: int) -> None:
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.max_seqs = max_seqs
        self.table_width = table_width
        t, r = max_tokens, max_rows
        self.tokens = 0
        self.positions = t
        self.slots = 2 * t
        self.token_seq = 3 * t
        self.rows = 4 * t
        self.params = 4 * t + r
        self.tables = self.params + r * _PARAM_INTS
        self.total = self.tables + max_seqs * table_width

    def fill(
        self,
        words: npt.NDArray[np.int32],
        batch: ForwardBatch,
        sampling: SamplingBatch | None,
        tokens: int,
        rows: int,
    ) -> int:
        """Write `batch` padded to `tokens` rows and `rows` logits rows into `words`; returns
        how many leading words must be copied to the device."""
        n, s = batch.num_tokens, batch.num_seqs
        num_rows = batch.logits_indices.shape[0]
        if n > tokens or num_rows > rows or s > self.max_seqs or tokens > self.max_tokens:
            raise ValueError(
                f"a batch of {n} tokens, {num_rows} logits rows and {s} sequences does not fit "
                f"a bucket of {tokens} tokens and {rows} rows ({self.max_seqs} sequences)"
            )
        if rows > self.max_rows:
            raise ValueError(f"{rows} logits rows exceed the reserved {self.max_rows}")
        width = batch.block_tables.shape[1]
        if width > self.table_width:
            raise ValueError(f"block tables of {width} blocks exceed {self.table_width}")
        _put(words, self.tokens, batch.token_ids, tokens, -1)
        _put(words, self.positions, batch.positions, tokens, -1)
        _put(words, self.slots, batch.slot_mapping, tokens, -1)
        seq_of_token = np.arange(s, dtype=np.int32)
        if n != s:  # some sequence has several tokens (none has none)
            seq_of_token = np.repeat(seq_of_token, batch.query_lens)
        _put(words, self.token_seq, seq_of_token, tokens, 0)
        _put(words, self.rows, batch.logits_indices, rows, 0)
        params = words[self.params : self.tables].view(ROW_PARAMS_DTYPE)
        sampled = num_rows if sampling is not None else 0
        params[sampled:rows] = _PADDING_ROW  # greedy, no mask
        if sampling is not None and sampled:
            row_params(
                sampling.temperature,
                sampling.top_k,
                sampling.top_p,
                sampling.min_p,
                sampling.seeds,
                sampling.steps,
                -1 if sampling.mask_rows is None else sampling.mask_rows,
                out=params,
            )
        tables = words[self.tables :].reshape(self.max_seqs, self.table_width)
        tables[:s, :width] = batch.block_tables
        return self.tables + s * self.table_width


def _put(
    words: npt.NDArray[np.int32], offset: int, values: npt.NDArray[Any], size: int, pad: int
) -> None:
    count = values.shape[0]
    words[offset : offset + count] = values
    words[offset + count : offset + size] = pad


class StepInputs:
    """Owns the pinned and device metadata buffers of a backend's steps.

    Two pinned buffers take turns (`slot`), so a step can be filled while the previous step's
    copy may still be queued (asynchronous scheduling); the caller makes sure a slot's last
    copy ran before filling it again. One device buffer: copies and graphs are stream-ordered.
    """

    SLOTS: Final = 2

    def __init__(
        self, max_tokens: int, max_rows: int, max_seqs: int, table_width: int, mask_words: int
    ) -> None:
        self.layout = StepLayout(max_tokens, max_rows, max_seqs, table_width)
        self.max_rows = max_rows
        self.mask_words = mask_words
        self.hosts = [PinnedHostBuffer.alloc(4 * self.layout.total) for _ in range(self.SLOTS)]
        self.device = DeviceBuffer.alloc(4 * self.layout.total)
        self._words = [host.array(np.int32) for host in self.hosts]
        mask_bytes = 4 * max_rows * mask_words
        self.mask_hosts = [PinnedHostBuffer.alloc(mask_bytes) for _ in range(self.SLOTS)]
        self.mask_device = DeviceBuffer.alloc(mask_bytes)
        self._masks = [host.array(np.int32, (max_rows, mask_words)) for host in self.mask_hosts]
        self._slot = 0
        self._used = self.layout.tables
        self._masks_used = 0

    def arrays(self, tokens: int, rows: int) -> StepArrays:
        def view(offset: int, shape: tuple[int, ...], dtype: Any = _I32) -> DeviceArray:
            nbytes = max(int(np.prod(shape)), 1) * np.dtype(dtype).itemsize
            return DeviceArray(self.device.view(4 * offset, nbytes), shape, np.dtype(dtype))

        lay = self.layout
        return StepArrays(
            tokens=view(lay.tokens, (tokens,)),
            positions=view(lay.positions, (tokens,)),
            slots=view(lay.slots, (tokens,)),
            token_seq=view(lay.token_seq, (tokens,)),
            logits_rows=view(lay.rows, (rows,)),
            params=view(lay.params, (rows,), ROW_PARAMS_DTYPE),
            block_tables=view(lay.tables, (lay.max_seqs, lay.table_width)),
            masks=DeviceArray(
                self.mask_device.view(0, 4 * self.max_rows * self.mask_words),
                (self.max_rows, self.mask_words),
                _I32,
            ),
        )

    def fill(
        self,
        batch: ForwardBatch,
        sampling: SamplingBatch | None,
        tokens: int,
        rows: int,
        slot: int = 0,
    ) -> None:
        """Write `batch` padded to the bucket into pinned buffer `slot` (see StepLayout.fill)."""
        self._slot = slot
        self._used = self.layout.fill(self._words[slot], batch, sampling, tokens, rows)
        masks = None if sampling is None else sampling.masks
        self._masks_used = 0 if masks is None else masks.shape[0]
        if masks is not None:
            self._put_masks(masks, slot)

    def upload(self, stream: Stream) -> None:
        """Queue the copy of what `fill` wrote; that slot must not change until it ran."""
        self.device.copy_from_host(self._words[self._slot][: self._used], stream)
        if self._masks_used:
            self.mask_device.copy_from_host(self._masks[self._slot][: self._masks_used], stream)

    def upload_masks(self, masks: npt.NDArray[np.int32], slot: int, stream: Stream) -> None:
        """Write and queue the copy of a step's masks that came after its other inputs (`fill`
        with `sampling.masks` None, then `upload`): stream-ordered after the forward pass it
        follows, before the sampling that reads them."""
        self._put_masks(masks, slot)
        if masks.shape[0]:
            self.mask_device.copy_from_host(self._masks[slot][: masks.shape[0]], stream)

    def _put_masks(self, masks: npt.NDArray[np.int32], slot: int) -> None:
        if masks.shape[1] != self.mask_words or masks.shape[0] > self.max_rows:
            raise ValueError(
                f"token masks {masks.shape} do not fit [{self.max_rows}, {self.mask_words}]"
            )
        self._masks[slot][: masks.shape[0]] = masks

    def free(self) -> None:
        for host in (*self.hosts, *self.mask_hosts):
            host.free()
        self.device.free()
        self.mask_device.free()
