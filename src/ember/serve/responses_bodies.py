"""The JSON body of `POST /v1/responses` (OpenAI's Responses API), checked into a typed request.

Text in, text out: `input` as a string or as messages (`role` and `content`, a string or
`input_text` / `output_text` parts), `instructions`, `max_output_tokens`, `temperature`,
`top_p`, `previous_response_id`, `store`, `stream`, `metadata`, `user`, and `text.format`
(text, `json_object`, or `json_schema`: structured outputs as on chat). Fields that would
change the answer in ways Ember cannot honour here (tools, reasoning, logprobs, background
runs, stored prompts, conversations, automatic truncation) are refused with a 400 naming the
field; unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgspec

from ember.engine.sampling_params import SamplingParams
from ember.engine.structured_output import StructuredKind, StructuredOutput
from ember.serve.api_errors import BadRequestError, quoted
from ember.serve.body_decoding import decode_body
from ember.serve.openai_requests import GenerationOptions, checked

# Roles as the chat template knows them: OpenAI's `developer` is the template's `system`.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_EXACT_FLOAT_INTEGERS = 2**53
_MAX_METADATA_PAIRS = 16

FIELD_TEXT = {
    "input": "a string or an array of messages",
    "input[]": "a message: an object with 'role' and 'content'",
    "input[].content": "a string or an array of input_text parts",
    "input[].content[]": "an object with 'type' and 'text'",
    "metadata": "an object of string values",
}


class InputPart(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None


class InputItem(msgspec.Struct, gc=False):
    type: str | None = None
    role: str | None = None
    content: str | list[InputPart] | None = None


class TextFormat(msgspec.Struct):
    """`text.format`: text, `json_object`, or `json_schema` (with its name and schema beside
    the type, unlike chat's `response_format`)."""

    type: str | None = None
    name: str | None = None
    schema: Any = None
    strict: bool | None = None
    description: str | None = None


class TextOptions(msgspec.Struct):
    format: TextFormat | None = None


class ResponsesBody(msgspec.Struct):
    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: int | float | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    text: TextOptions | None = None
    truncation: str | None = None
    parallel_tool_calls: bool | None = None
    # Refused when set to anything but their "off" values; any JSON value.
    tools: Any = None
    tool_choice: Any = None
    reasoning: Any = None
    include: Any = None
    top_logprobs: Any = None
    background: Any = None
    prompt: Any = None
    conversation: Any = None


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    instructions: str | None
    messages: list[dict[str, str]]  # `input`, as chat messages
    previous_response_id: str | None
    store: bool
    options: GenerationOptions
    metadata: dict[str, str] = field(default_factory=dict)


def parse_responses_request(body: bytes) -> ResponsesRequest:
    fields = decode_body(body, ResponsesBody, FIELD_TEXT)
    if fields.model is None:
        _fail("model", "'model' is required", "missing_required_parameter")
    _refuse_unsupported(fields)
    if fields.input is None:
        _fail("input", "'input' is required", "missing_required_parameter")
    metadata = fields.metadata or {}
    if len(metadata) > _MAX_METADATA_PAIRS:
        _fail("metadata", f"'metadata' takes at most {_MAX_METADATA_PAIRS} pairs")
    return ResponsesRequest(
        model=fields.model,
        instructions=fields.instructions or None,
        messages=_messages(fields.input),
        previous_response_id=fields.previous_response_id,
        store=fields.store is not False,
        options=_options(fields),
        metadata=metadata,
    )


def _refuse_unsupported(fields: ResponsesBody) -> None:
    if fields.tools:
        _fail("tools", "'tools' are not supported on /v1/responses by this server")
    if fields.tool_choice not in (None, "none", "auto"):
        _fail("tool_choice", "'tool_choice' is not supported on /v1/responses by this server")
    format_type = fields.text.format.type if fields.text and fields.text.format else None
    if format_type not in (None, "text", "json_object", "json_schema"):
        _fail(
            "text.format.type",
            f"text.format type {quoted(format_type)} is not supported; use 'text', "
            "'json_object' or 'json_schema'",
        )
    reasoning = fields.reasoning
    if reasoning is not None and not (
        isinstance(reasoning, dict) and all(v is None for v in reasoning.values())
    ):
        _fail("reasoning", "'reasoning' is not supported by this model")
    if fields.include:
        _fail("include", "'include' (extra output data) is not supported by this server")
    if fields.top_logprobs not in (None, 0):
        _fail("top_logprobs", "'top_logprobs' is not supported on /v1/responses by this server")
    if fields.background not in (None, False):
        _fail("background", "'background' responses are not supported by this server")
    for name, value in (("prompt", fields.prompt), ("conversation", fields.conversation)):
        if value is not None:
            _fail(name, f"'{name}' is not supported by this server; send the text as 'input'")
    if fields.truncation not in (None, "disabled"):
        _fail(
            "truncation",
            f"truncation {quoted(fields.truncation)} is not supported; only 'disabled' (an "
            "input over the context is a 400)",
        )


def _messages(raw: str | list[InputItem]) -> list[dict[str, str]]:
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not raw:
        _fail("input", "'input' must not be empty")
    messages = []
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if item.type not in (None, "message"):
            _fail(
                f"{where}.type",
                f"{where} has type {quoted(item.type)}; this server takes 'message' items "
                "(text) only",
            )
        if item.role is None:
            _fail(f"{where}.role", f"'{where}.role' is required", "missing_required_parameter")
        role = _ROLES.get(item.role)
        if role is None:
            _fail(
                f"{where}.role",
                f"{where}.role {quoted(item.role)} is not supported; use one of "
                f"{', '.join(sorted(_ROLES))}",
            )
        if item.content is None:
            _fail(
                f"{where}.content", f"'{where}.content' is required", "missing_required_parameter"
            )
        content = item.content
        text = content if isinstance(content, str) else _text(content, f"{where}.content")
        messages.append({"role": role, "content": text})
    return messages


def _text(parts: list[InputPart], where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        name = f"{where}[{index}]"
        if part.type not in _TEXT_PARTS:
            shown = "no type" if part.type is None else f"type {quoted(part.type)}"
            _fail(f"{name}.type", f"{name} has {shown}; this model takes 'input_text' parts only")
        if part.text is None:
            _fail(f"{name}.text", f"'{name}.text' is required", "missing_required_parameter")
        texts.append(part.text)
    return "".join(texts)


def _structured(fields: ResponsesBody) -> StructuredOutput | None:
    text_format = fields.text.format if fields.text else None
    if text_format is None or text_format.type in (None, "text"):
        return None
    if text_format.type == "json_object":
        return StructuredOutput(StructuredKind.JSON_OBJECT, "", "text.format")
    if text_format.schema is None:
        _fail(
            "text.format.schema",
            "text.format type 'json_schema' needs 'text.format.schema'",
            "missing_required_parameter",
        )
    return StructuredOutput.json_schema(text_format.schema, "text.format.schema")


def _options(fields: ResponsesBody) -> GenerationOptions:
    max_tokens = _positive_integer("max_output_tokens", fields.max_output_tokens)
    params = checked(
        lambda: SamplingParams(
            max_tokens=1,
            temperature=1.0 if fields.temperature is None else fields.temperature,
            top_p=1.0 if fields.top_p is None else fields.top_p,
            structured=_structured(fields),
        )
    )
    return GenerationOptions(
        params=params,
        max_tokens=max_tokens,
        n=1,
        stream=bool(fields.stream),
        include_usage=False,
        timeout=None,
        user=fields.user,
        cache_salt=None,
    )


def _positive_integer(name: str, value: int | float | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not (value.is_integer() and abs(value) <= _EXACT_FLOAT_INTEGERS):
            _fail(name, f"'{name}' must be an integer, not a number", "invalid_type")
        value = int(value)
    if value < 1:
        _fail(name, f"'{name}' must be >= 1, got {value}")
    return value


def _fail(param: str, message: str, code: str = "invalid_value") -> NoReturn:
    raise BadRequestError(message, param=param, code=code)
