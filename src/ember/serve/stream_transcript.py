"""A streamed job's SSE events: cut from the engine server's answer, and stored as its result.

The worker reads the engine server's stream (`serve/openai_routes.py`'s chunks, one `data:`
line per event) with the usage chunk always asked for, so that the job's tokens can be charged
to its tenant; for a client that did not ask for it, the usage chunk is taken out and each
chunk's `"usage":null` with it, which gives byte for byte what `ember serve` streams without
`include_usage`. `[DONE]` is not kept: the gateway ends the client's stream once the job's
result is stored. The result is one JSON object:

    {"object": "stream", "usage": {...}, "events": [<each chunk's JSON>, ...]}

from which a gateway relays whatever it did not get live (`serve/chunk_relay.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from ember.serve.openai_responses import USAGE_NULL

STREAM_OBJECT = "stream"
_DATA = b"data: "
_END = b"\n\n"
_DONE = b"[DONE]"
_USAGE_CHUNK = b'"choices":[],"usage":{'
_USAGE_NULL_TAIL = b"," + USAGE_NULL + b"}"


class TokenUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _UsageChunk(msgspec.Struct):
    usage: TokenUsage | None = None


class _Transcript(msgspec.Struct):
    events: list[msgspec.Raw]
    object: str = STREAM_OBJECT
    usage: TokenUsage | None = None


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole events at the start of `buffer` (each with its blank line) and the rest."""
    end = buffer.rfind(_END)
    if end < 0:
        return [], buffer
    whole, rest = buffer[: end + len(_END)], buffer[end + len(_END) :]
    return [event + _END for event in whole[: -len(_END)].split(_END)], rest


def event(payload: bytes) -> bytes:
    return _DATA + payload + _END


@dataclass(slots=True)
class StreamTranscript:
    """What the worker keeps of one delivery's stream, event by event."""

    client_usage: bool  # the client asked for the usage chunk
    payloads: list[bytes] = field(default_factory=list)
    usage: TokenUsage | None = None
    done: bool = False  # `[DONE]` came: the stream is whole

    def add(self, raw_event: bytes) -> bytes | None:
        """Takes one event as the engine server sent it; returns it as the client gets it
        (None: nothing for the client)."""
        if not raw_event.startswith(_DATA):
            return None  # not ours: our server writes only `data:` events
        payload = raw_event[len(_DATA) : -len(_END)]
        if payload == _DONE:
            self.done = True
            return None
        if _USAGE_CHUNK in payload:
            found = msgspec.json.decode(payload, type=_UsageChunk).usage
            self.usage = found or self.usage
            if not self.client_usage:
                return None
        elif not self.client_usage and payload.endswith(_USAGE_NULL_TAIL):
            payload = payload[: -len(_USAGE_NULL_TAIL)] + b"}"
        self.payloads.append(payload)
        return event(payload)

    def encode(self) -> bytes:
        usage = b"null" if self.usage is None else msgspec.json.encode(self.usage)
        events = b",".join(self.payloads)
        return b'{"object":"stream","usage":' + usage + b',"events":[' + events + b"]}"


def stored_events(result: bytes) -> list[bytes]:
    """The client's events of a stored stream; `ValueError` if `result` is not one."""
    try:
        transcript = msgspec.json.decode(result, type=_Transcript)
    except msgspec.DecodeError as error:
        raise ValueError(f"the job's result is not a stored stream: {error}") from None
    if transcript.object != STREAM_OBJECT:
        raise ValueError(f"the job's result is a {transcript.object!r}, not a stored stream")
    return [event(bytes(payload)) for payload in transcript.events]


def result_usage(result: bytes) -> TokenUsage | None:
    """The token counts of a stored result, a stream's or a whole answer's (both say `usage`)."""
    try:
        return msgspec.json.decode(result, type=_UsageChunk).usage
    except msgspec.DecodeError:
        return None
