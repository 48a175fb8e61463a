"""Messages between the HTTP server and its engine worker: token ids and small metadata only.

The server sends requests to add and ids to abort; the worker answers with one `StepReport`
per engine step carrying every request's new token ids at once (never one message per token).
Text never crosses: the server holds the tokenizer, detokenizes and applies stop strings.

Messages are typed `msgspec.Struct`s. Over a process boundary each is a length-prefixed
MessagePack frame on a stream socket, decoded into the message types and nothing else (a frame
cannot make the receiver build arbitrary objects, as a pickle could), so the same encoding can
later cross machines.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import msgspec

from ember.engine.engine_stats import EngineStats
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduling import Scheduling
from ember.engine.sequence import FinishReason, RequestId, TokenLogprob
from ember.engine.sequence_limits import SequenceLimits

if TYPE_CHECKING:
    from ember.engine.llm_engine import LLMEngine

FRAME_HEADER: Final = struct.Struct("<I")


class AddRequest(msgspec.Struct, frozen=True, array_like=True, tag=True):
    request_id: RequestId
    prompt_ids: list[int]
    params: SamplingParams  # stop strings removed: the server applies them
    cache_salt: str | None = None
    # The tenant's class and share; None: the engine's default (first come, first served).
    scheduling: Scheduling | None = None


class AbortRequests(msgspec.Struct, frozen=True, array_like=True, tag=True):
    request_ids: list[RequestId]


class Shutdown(msgspec.Struct, frozen=True, array_like=True, tag=True):
    pass


ServerMessage = AddRequest | AbortRequests | Shutdown

# (request id, new token ids, their logprobs or None, finish reason or None); a tuple because a
# step carries one per running request, and a tuple is the cheapest thing to encode and build.
RequestDelta = tuple[RequestId, list[int], list[TokenLogprob] | None, FinishReason | None]


class WorkerReady(msgspec.Struct, frozen=True, array_like=True, tag=True):
    pid: int
    device: str
    limits: SequenceLimits  # what fits in the worker's engine: the server checks requests with it
    load_seconds: float  # the engine's construction: model, weights, KV cache (for the log)

    @classmethod
    def of(cls, engine: LLMEngine) -> WorkerReady:
        return cls(
            os.getpid(), engine.model.backend.device_name, engine.limits, engine.load_seconds
        )


class WorkerFailed(msgspec.Struct, frozen=True, array_like=True, tag=True):
    """The worker could not start (model load failed); it exits after sending this."""

    message: str


class RequestRejected(msgspec.Struct, frozen=True, array_like=True, tag=True):
    request_id: RequestId
    message: str
    param: str | None  # the request field to blame, as the engine's error named it


class StepReport(msgspec.Struct, frozen=True, array_like=True, tag=True):
    deltas: list[RequestDelta]
    admitted: list[RequestId]  # requests the scheduler moved into the running batch this step
    stats: EngineStats


WorkerMessage = WorkerReady | WorkerFailed | RequestRejected | StepReport

_encoder: Final = msgspec.msgpack.Encoder()
# What each end receives: the worker decodes the server's messages, the server the worker's.
SERVER_MESSAGES: Final = msgspec.msgpack.Decoder(ServerMessage)
WORKER_MESSAGES: Final = msgspec.msgpack.Decoder(WorkerMessage)

M = TypeVar("M", ServerMessage, WorkerMessage)


def encode_frame(message: ServerMessage | WorkerMessage) -> bytes:
    payload = _encoder.encode(message)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_worker_message(payload: bytes) -> WorkerMessage:
    return WORKER_MESSAGES.decode(payload)


class ChannelClosedError(EOFError):
    """The other end of the socket went away."""


class FrameSocket(Generic[M]):
    """A blocking end of the channel (the worker's), receiving the messages `decoder` decodes:
    blocking sends, and receives that can poll without blocking."""

    def __init__(self, sock: socket.socket, decoder: msgspec.msgpack.Decoder[M]) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._decode: Callable[[bytes], M] = decoder.decode
        self._buffer = bytearray()

    def send(self, message: ServerMessage | WorkerMessage) -> None:
        self._sock.sendall(encode_frame(message))

    def receive_all(self, block: bool) -> list[M]:
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

    def _complete_frames(self) -> list[M]:
        messages: list[M] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(buffer, offset)
            end = offset + FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[offset + FRAME_HEADER.size : end])
            messages.append(self._decode(payload))
            offset = end
        del buffer[:offset]
        return messages
