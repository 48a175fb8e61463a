"""OpenAI response bodies and stream chunks for chat and text completions.

Stream chunks are built from per-request text and one JSON string encoding of the new text:
the fixed parts of a chunk (id, model, created, the choice's index, the null logprobs and
finish reason of a chunk mid-stream) are encoded once per request, not per chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

# What json.dumps(text, ensure_ascii=False) returns (it calls this), minus the encoder object
# that dumps builds on each call for a non-default option: a third of the cost of a chunk.
from json.encoder import encode_basestring

from ember.engine.sequence import TokenLogprob
from ember.model.tokenizer import Tokenizer
from ember.serve.generation import Choice, ChoiceDelta, GenerationRequest
from ember.serve.tool_parsers import (
    ContentDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
    ToolEvent,
)

DONE = b"data: [DONE]\n\n"
# Every chunk's last field when the client asked for usage (OpenAI's shape); a queue worker
# takes it out again for a client that did not (`serve/stream_transcript.py`).
USAGE_NULL = b'"usage":null'


def new_response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class ResponseIdentity:
    id: str
    model: str
    created: int
    system_fingerprint: str  # the model file and Ember version (`system_fingerprint.py`)

    @classmethod
    def new(cls, prefix: str, model: str, system_fingerprint: str) -> ResponseIdentity:
        return cls(new_response_id(prefix), model, int(time.time()), system_fingerprint)


def usage(request: GenerationRequest) -> dict[str, int]:
    """Prompt tokens count once per distinct prompt, however many choices share it."""
    prompts = {id(c.prompt_ids): len(c.prompt_ids) for c in request.choices}
    prompt_tokens = sum(prompts.values())
    completion_tokens = sum(c.num_output_tokens for c in request.choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(tokenizer: Tokenizer, logprobs: Sequence[TokenLogprob]) -> dict[str, object]:
    def entry(token_id: int, logprob: float) -> dict[str, object]:
        return {
            "token": tokenizer.token_text(token_id),
            "logprob": logprob,
            "bytes": list(tokenizer.token_bytes(token_id)),
        }

    content = []
    for lp in logprobs:
        item = entry(lp.token_id, lp.logprob)
        item["top_logprobs"] = [entry(t, v) for t, v in lp.top]
        content.append(item)
    return {"content": content}


def completion_logprobs(
    tokenizer: Tokenizer, logprobs: Sequence[TokenLogprob], text_offset: int
) -> dict[str, object]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for lp in logprobs:
        text = tokenizer.token_text(lp.token_id)
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        top = {tokenizer.token_text(t): v for t, v in lp.top}
        # OpenAI's always holds the sampled token, even when it is not among the most likely.
        top.setdefault(text, lp.logprob)
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def tool_finish_reason(finish_reason: str | None, parser: ToolCallParser | None) -> str | None:
    """OpenAI's `tool_calls` for an output that ended on its own and made calls."""
    if parser is not None and parser.calls and finish_reason == "stop":
        return "tool_calls"
    return finish_reason


def tool_call_object(call: ToolCall) -> dict[str, object]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def assistant_message(text: str, parser: ToolCallParser | None) -> dict[str, object]:
    """The chat answer's message: the text, or (tools) the text outside calls and the calls."""
    if parser is None:
        return {"role": "assistant", "content": text}
    events = [*parser.feed(text), *parser.finish()]
    content = "".join(event.text for event in events if isinstance(event, ContentDelta))
    message: dict[str, object] = {"role": "assistant", "content": content or None}
    if parser.calls:
        message["tool_calls"] = [tool_call_object(call) for call in parser.calls]
    elif not content:
        message["content"] = ""
    return message


def chat_completion_body(
    identity: ResponseIdentity,
    request: GenerationRequest,
    tokenizer: Tokenizer,
    parsers: Sequence[ToolCallParser | None] | None = None,
) -> dict[str, object]:
    """`parsers`: per choice, the parser of its tool calls (None: a plain answer)."""
    choices = []
    for choice in request.choices:
        delta = _take_all(choice)
        parser = None if parsers is None else parsers[choice.index]
        choices.append(
            {
                "index": choice.index,
                "message": assistant_message(delta.text, parser),
                "logprobs": (
                    chat_logprobs(tokenizer, delta.logprobs)
                    if choice.params.logprobs is not None
                    else None
                ),
                "finish_reason": tool_finish_reason(delta.finish_reason, parser),
            }
        )
    return {
        "id": identity.id,
        "object": "chat.completion",
        "created": identity.created,
        "model": identity.model,
        "system_fingerprint": identity.system_fingerprint,
        "choices": choices,
        "usage": usage(request),
    }


def completion_body(
    identity: ResponseIdentity,
    request: GenerationRequest,
    tokenizer: Tokenizer,
    echo_prompts: Sequence[str] | None,
) -> dict[str, object]:
    choices = []
    for choice in request.choices:
        delta = _take_all(choice)
        prefix = "" if echo_prompts is None else echo_prompts[choice.index]
        choices.append(
            {
                "index": choice.index,
                "text": prefix + delta.text,
                "logprobs": (
                    completion_logprobs(tokenizer, delta.logprobs, len(prefix))
                    if choice.params.logprobs is not None
                    else None
                ),
                "finish_reason": delta.finish_reason,
            }
        )
    return {
        "id": identity.id,
        "object": "text_completion",
        "created": identity.created,
        "model": identity.model,
        "system_fingerprint": identity.system_fingerprint,
        "choices": choices,
        "usage": usage(request),
    }


def _take_all(choice: Choice) -> ChoiceDelta:
    return choice.take() or ChoiceDelta("", [], 0, choice.finish_reason)


class ChunkEncoder:
    """SSE `data:` lines for one streamed request, chat or text completion."""

    def __init__(
        self, identity: ResponseIdentity, tokenizer: Tokenizer, chat: bool, include_usage: bool
    ) -> None:
        self._tokenizer = tokenizer
        self.is_chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            f'data: {{"id":{json.dumps(identity.id)},"object":"{obj}",'
            f'"created":{identity.created},"model":{json.dumps(identity.model)},'
            f'"system_fingerprint":{json.dumps(identity.system_fingerprint)},'
            '"choices":[{"index":'
        )
        self._tail = f",{USAGE_NULL.decode()}}}\n\n" if include_usage else "}\n\n"
        self._usage_head = (
            f'data: {{"id":{json.dumps(identity.id)},"object":"{obj}",'
            f'"created":{identity.created},"model":{json.dumps(identity.model)},'
            f'"system_fingerprint":{json.dumps(identity.system_fingerprint)},'
            '"choices":[],"usage":'
        )
        # A chunk mid-stream without logprobs: prefix (per choice index), text, suffix.
        self._text_prefixes: dict[int, str] = {}
        self._text_suffix = (
            '},"logprobs":null,"finish_reason":null}]'
            if chat
            else ',"logprobs":null,"finish_reason":null}]'
        ) + self._tail

    def _text_prefix(self, index: int) -> str:
        prefix = self._text_prefixes.get(index)
        if prefix is None:
            field = '"delta":{"content":' if self.is_chat else '"text":'
            prefix = self._text_prefixes[index] = f"{self._head}{index},{field}"
        return prefix

    def role(self, index: int) -> bytes:
        """The first chat chunk of a choice: the assistant role, no content yet."""
        return (
            f'{self._head}{index},"delta":{{"role":"assistant","content":""}},'
            f'"logprobs":null,"finish_reason":null}}]{self._tail}'
        ).encode()

    def delta(self, choice: Choice, delta: ChoiceDelta, text_offset: int = 0) -> bytes:
        text = encode_basestring(delta.text)
        if delta.finish_reason is None and choice.params.logprobs is None:
            return (self._text_prefix(choice.index) + text + self._text_suffix).encode()
        if choice.params.logprobs is None:
            logprobs = "null"
        elif self.is_chat:
            logprobs = json.dumps(chat_logprobs(self._tokenizer, delta.logprobs))
        else:
            logprobs = json.dumps(completion_logprobs(self._tokenizer, delta.logprobs, text_offset))
        finish = "null" if delta.finish_reason is None else f'"{delta.finish_reason}"'
        if self.is_chat:
            body = '{"content":' + text + "}" if delta.text or not delta.finish_reason else "{}"
            payload = f'"delta":{body}'
        else:
            payload = f'"text":{text}'
        return (
            f"{self._head}{choice.index},{payload},"
            f'"logprobs":{logprobs},"finish_reason":{finish}}}]{self._tail}'
        ).encode()

    def tool_events(
        self, choice: Choice, delta: ChoiceDelta, parser: ToolCallParser, events: list[ToolEvent]
    ) -> list[bytes]:
        """Chat chunks for a delta of a choice whose output may call tools: its content and
        `delta.tool_calls` pieces, then its logprobs and finish reason (if any) on their own."""
        chunks = []
        for event in events:
            if isinstance(event, ContentDelta):
                if event.text:
                    body = '{"content":' + encode_basestring(event.text) + "}"
                    chunks.append(self._chat_chunk(choice.index, body, "null", "null"))
            else:
                chunks.append(self._chat_chunk(choice.index, _tool_delta(event), "null", "null"))
        logprobs = "null"
        if choice.params.logprobs is not None and delta.logprobs:
            logprobs = json.dumps(chat_logprobs(self._tokenizer, delta.logprobs))
        finish = tool_finish_reason(delta.finish_reason, parser)
        if logprobs != "null" or finish is not None:
            reason = "null" if finish is None else f'"{finish}"'
            chunks.append(self._chat_chunk(choice.index, "{}", logprobs, reason))
        return chunks

    def _chat_chunk(self, index: int, delta: str, logprobs: str, finish: str) -> bytes:
        return (
            f'{self._head}{index},"delta":{delta},'
            f'"logprobs":{logprobs},"finish_reason":{finish}}}]{self._tail}'
        ).encode()

    def text(self, index: int, text: str) -> bytes:
        """A text-completion chunk with fixed text (the echoed prompt)."""
        return (
            f"{self._head}{index},"
            f'"text":{json.dumps(text, ensure_ascii=False)},'
            f'"logprobs":null,"finish_reason":null}}]{self._tail}'
        ).encode()

    def usage(self, request: GenerationRequest) -> bytes:
        return f"{self._usage_head}{json.dumps(usage(request))}}}\n\n".encode()


def _tool_delta(event: ToolCallDelta) -> str:
    call: dict[str, object] = {"index": event.index}
    function: dict[str, object] = {}
    if event.id is not None:
        call["id"] = event.id
        call["type"] = "function"
    if event.name is not None:
        function["name"] = event.name
    function["arguments"] = event.arguments
    call["function"] = function
    return json.dumps({"tool_calls": [call]}, ensure_ascii=False)


def error_event(body: dict[str, object]) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
