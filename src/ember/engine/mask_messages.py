"""What the engine and its mask worker processes say to each other (`engine/mask_workers.py`,
`engine/mask_worker.py`): one `MaskRequest` per step that has rows for the worker, one
`MaskReply` back; `MaskWorkerReady` once, when the worker can take requests.

MessagePack frames of these `msgspec.Struct`s over a socket pair between the engine and a child
it started; each end decodes only the type it expects. The masks themselves never cross the
socket: the worker writes them into memory both processes map (`MaskRequest.rows[i].row` is
the row of that memory).
"""

from __future__ import annotations

import msgspec

from ember.engine.structured_output import StructuredOutput


class MaskRow(msgspec.Struct, array_like=True, frozen=True):
    """One sequence's mask this step: its mirror matcher first takes `tokens` (the outputs the
    engine sampled since the worker's last mask of it), then up to `room` tokens its grammar
    forces after them (jump-forward; the reply's `forced`), then writes its mask into `row`."""

    seq_id: int
    row: int
    tokens: list[int]
    # Set the first time the worker sees the sequence (its mirror is compiled from it; `tokens`
    # are then all its outputs so far).
    spec: StructuredOutput | None = None
    room: int = 0


class MaskRequest(msgspec.Struct, array_like=True, frozen=True):
    rows: list[MaskRow]
    # Sequences the engine has finished with since its last request: their mirrors go.
    gone: list[int]


class MaskReply(msgspec.Struct, array_like=True, frozen=True):
    # Rows the worker did not write: their mirror's grammar is still compiling (it keeps their
    # tokens), or it failed (the mirror is gone; the engine computes the mask itself).
    not_ready: list[int]
    failed: list[int]
    # Per row written, the tokens its mirror took as forced (rows that had `room` and forced
    # tokens only); the engine's sequence takes the same.
    forced: dict[int, list[int]] = msgspec.field(default_factory=dict)


class MaskWorkerReady(msgspec.Struct, array_like=True, frozen=True):
    pid: int


ENCODER = msgspec.msgpack.Encoder()
REQUEST_DECODER = msgspec.msgpack.Decoder(MaskRequest)
REPLY_DECODER = msgspec.msgpack.Decoder(MaskReply)
READY_DECODER = msgspec.msgpack.Decoder(MaskWorkerReady)
