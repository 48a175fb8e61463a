"""Messages between the HTTP server and its engine worker: token ids and small metadata only.

The server sends sequences to add and ids to abort; the worker answers with one `StepReport`
per engine step carrying every sequence's new token ids at once (never one message per token).
Text never crosses: the server holds the tokenizer, detokenizes and applies stop strings.
Over a process boundary each message is a length-prefixed pickle frame on a stream socket.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from dataclasses import dataclass

from ember.engine.llm_engine import EngineStats
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import TokenLogprob

FRAME_HEADER = struct.Struct("<I")
_PICKLE_PROTOCOL = 5


@dataclass(frozen=True, slots=True)
class AddSequence:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams  # stop strings removed: the server applies them


@dataclass(frozen=True, slots=True)
class AbortSequences:
    seq_ids: list[int]


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


ServerMessage = AddSequence | AbortSequences | Shutdown

# (seq id, new token ids, their logprobs or None, finish reason or None); a plain tuple because
# a step carries one per running sequence and tuples are the cheapest thing to pickle.
SequenceDelta = tuple[int, list[int], list[TokenLogprob] | None, str | None]


@dataclass(frozen=True, slots=True)
class WorkerReady:
    pid: int
    device: str
    num_kv_blocks: int
    block_size: int


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The worker could not start (model load failed); it exits after sending this."""

    message: str


@dataclass(frozen=True, slots=True)
class SequenceRejected:
    seq_id: int
    message: str


@dataclass(frozen=True, slots=True)
class StepReport:
    deltas: list[SequenceDelta]
    started: list[int]  # sequences that began running (left the waiting queue) this step
    stats: EngineStats


WorkerMessage = WorkerReady | WorkerFailed | SequenceRejected | StepReport


def encode_frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=_PICKLE_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> object:
    return pickle.loads(payload)


class ChannelClosedError(EOFError):
    """The other end of the socket went away."""


class FrameSocket:
    """The worker's end: blocking sends, and receives that can poll without blocking."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._buffer = bytearray()

    def send(self, message: object) -> None:
        self._sock.sendall(encode_frame(message))

    def receive_all(self, block: bool) -> list[object]:
        """Every complete message available; waits for at least one when `block`."""
        messages = self._complete_frames()
        while not messages:
            timeout = None if block else 0.0
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                return []
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ChannelClosedError("the server closed the worker channel")
            self._buffer += chunk
            messages = self._complete_frames()
            if not block:
                break
        return messages

    def close(self) -> None:
        self._sock.close()

    def _complete_frames(self) -> list[object]:
        messages: list[object] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(buffer, offset)
            end = offset + FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            messages.append(decode_payload(bytes(buffer[offset + FRAME_HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return messages
