"""OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) checked into typed requests.

Fields follow OpenAI's API; `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
`stop_token_ids`, `include_stop_str_in_output` and `skip_special_tokens` are accepted as vLLM
accepts them, and `request_timeout` (seconds) can lower the server's deadline for one request.
Unknown fields are ignored, as OpenAI-compatible servers do; fields that would change the
answer in ways Ember cannot honour (logit_bias, suffix...) are refused with a 400. What the
output must match comes from `response_format` (OpenAI's `json_schema` and `json_object`),
vLLM's `structured_outputs` or its older `guided_json`/`guided_regex`/`guided_choice`/
`guided_grammar`: one of them per request.
The body's bytes are decoded into the structs of `openai_bodies` in one pass; this module
checks what a type cannot say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import msgspec

from ember.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from ember.engine.structured_output import StructuredKind, StructuredOutput
from ember.errors import SamplingParamsError, StructuredOutputError
from ember.serve.api_errors import BadRequestError, quoted
from ember.serve.body_decoding import decode_body
from ember.serve.openai_bodies import (
    FIELD_TEXT,
    AssistantToolCall,
    ChatBody,
    CompletionBody,
    ContentPart,
    GenerationBody,
    Message,
    StructuredOutputs,
    TokenIds,
)
from ember.serve.tool_calling import ToolRequest, parse_tools

MAX_STOP_STRINGS = 16
_SEED_RANGE = 2**63
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Integers may arrive as 2.0; beyond this a float no longer holds every integer exactly.
_EXACT_FLOAT_INTEGERS = 2**53

V = TypeVar("V")
# A prompt that is neither a string nor an array, named by its first byte.
_SCALAR_NAMES = {b"{": "an object", b"t": "a boolean", b"f": "a boolean"}


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What every generation request shares; `params.max_tokens` is set per prompt later."""

    params: SamplingParams
    max_tokens: int | None  # None: up to the end of the context
    n: int
    stream: bool
    include_usage: bool
    timeout: float | None
    user: str | None
    cache_salt: str | None
    # The body's `priority` (vLLM's: lower runs first); it may only make a request less urgent
    # than its tenant's class (`Tenant.scheduling`).
    priority: int | None = None

    def params_for(self, max_tokens: int, choice: int) -> SamplingParams:
        """Choice `i` of a seeded request uses seed + i, so the n choices differ but repeat."""
        seed = self.params.seed
        if seed is not None:
            seed = (seed + choice) % _SEED_RANGE
        return dataclasses.replace(self.params, max_tokens=max_tokens, seed=seed)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    options: GenerationOptions
    tools: ToolRequest | None = None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    echo: bool
    options: GenerationOptions


def parse_chat_request(body: bytes, max_choices: int) -> ChatRequest:
    chat = decode_body(body, ChatBody, FIELD_TEXT)
    model = _model(chat)
    tools = parse_tools(chat)
    logprobs = bool(chat.logprobs)
    top_logprobs = _integer("top_logprobs", chat.top_logprobs, low=0, high=MAX_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        _fail("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    if chat.max_completion_tokens is not None:  # OpenAI's newer name wins over `max_tokens`
        max_tokens = _integer("max_completion_tokens", chat.max_completion_tokens, low=1)
    else:
        max_tokens = _integer("max_tokens", chat.max_tokens, low=1)
    messages = _messages(chat.messages)
    options = _options(chat, max_choices, max_tokens, (top_logprobs or 0) if logprobs else None)
    structured = options.params.structured
    if tools is not None and tools.choice.mode in ("required", "function") and structured:
        _fail(
            structured.param,
            f"'{structured.param}' and tool_choice "
            f"{quoted(tools.choice.name or tools.choice.mode)} each constrain the output; "
            "send one of them",
        )
    return ChatRequest(model, messages, options, tools)


def parse_completion_request(body: bytes, max_choices: int) -> CompletionRequest:
    completion = decode_body(body, CompletionBody, FIELD_TEXT)
    model = _model(completion)
    if completion.suffix is not None:
        _fail("suffix", "'suffix' (insertion) is not supported by this server")
    logprobs = _integer("logprobs", completion.logprobs, low=0, high=MAX_LOGPROBS)
    echo = bool(completion.echo)
    if echo and logprobs is not None:
        _fail("echo", "'echo' with 'logprobs' needs prompt logprobs, which Ember lacks")
    max_tokens = _integer("max_tokens", completion.max_tokens, low=1)
    options = _options(completion, max_choices, max_tokens, logprobs)
    best_of = _integer("best_of", completion.best_of, low=1)
    if best_of is not None and best_of != options.n:
        _fail("best_of", "'best_of' other than 'n' is not supported by this server")
    prompts = _prompts(completion.prompt)
    if len(prompts) * options.n > max_choices:
        _fail(
            "n",
            f"{len(prompts)} prompts x n={options.n} is {len(prompts) * options.n} "
            f"sequences; this server allows {max_choices} per request",
        )
    return CompletionRequest(model, prompts, echo, options)


def _model(body: GenerationBody) -> str:
    if body.model is None:
        _fail("model", "'model' is required", "missing_required_parameter")
    return body.model


def _options(
    body: GenerationBody, max_choices: int, max_tokens: int | None, logprobs: int | None
) -> GenerationOptions:
    if body.logit_bias:
        _fail("logit_bias", "'logit_bias' is not supported by this server")
    n = _integer("n", body.n, low=1, high=max_choices) or 1
    stream = bool(body.stream)
    if body.stream_options is not None and not stream:
        _fail("stream_options", "'stream_options' is only allowed with 'stream': true")
    timeout = body.request_timeout
    if timeout is not None and timeout < 0.001:
        _fail("request_timeout", f"'request_timeout' must be >= 0.001, got {timeout}")
    params = checked(
        lambda: SamplingParams(
            max_tokens=1,
            temperature=_or(body.temperature, 1.0),
            top_p=_or(body.top_p, 1.0),
            top_k=_integer("top_k", body.top_k, low=-1) or 0,
            min_p=_or(body.min_p, 0.0),
            repetition_penalty=_or(body.repetition_penalty, 1.0),
            presence_penalty=_or(body.presence_penalty, 0.0),
            frequency_penalty=_or(body.frequency_penalty, 0.0),
            seed=_integer("seed", body.seed),
            stop=_stop(body.stop),
            stop_token_ids=tuple(body.stop_token_ids or ()),
            ignore_eos=bool(body.ignore_eos),
            include_stop_str_in_output=bool(body.include_stop_str_in_output),
            logprobs=logprobs,
            skip_special_tokens=_or(body.skip_special_tokens, True),
            structured=_structured(body),
        )
    )
    return GenerationOptions(
        params=params,
        max_tokens=max_tokens,
        n=n,
        stream=stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        timeout=timeout,
        user=body.user,
        cache_salt=body.cache_salt,
        priority=_integer("priority", body.priority, low=-(2**31), high=2**31 - 1),
    )


def checked(make: Callable[[], SamplingParams]) -> SamplingParams:
    """`make()`, its refusals of a value (a range, a schema that is not one) as 400s naming
    the field."""
    try:
        return make()
    except StructuredOutputError as error:
        raise BadRequestError(str(error), param=error.param) from None
    except SamplingParamsError as error:
        message = str(error)
        raise BadRequestError(message, param=message.split(" ", 1)[0]) from None


def _structured(body: GenerationBody) -> StructuredOutput | None:
    """The one constraint the body sets, if any."""
    found: list[StructuredOutput] = []
    response_format = body.response_format
    if response_format is not None and response_format.type != "text":
        kind = response_format.type
        if kind == "json_object":
            found.append(StructuredOutput(StructuredKind.JSON_OBJECT))
        elif kind == "json_schema":
            where = "response_format.json_schema"
            if response_format.json_schema is None or response_format.json_schema.schema is None:
                _fail(
                    f"{where}.schema",
                    f"response_format type 'json_schema' needs '{where}.schema'",
                    "missing_required_parameter",
                )
            found.append(StructuredOutput.json_schema(response_format.json_schema.schema, where))
        else:
            _fail(
                "response_format.type",
                f"response_format type {quoted(kind)} is not supported; use 'text', "
                "'json_object' or 'json_schema'",
            )
    if body.guided_whitespace_pattern is not None:
        _fail("guided_whitespace_pattern", "'guided_whitespace_pattern' is not supported")
    if body.guided_json is not None:
        found.append(StructuredOutput.json_schema(_schema(body.guided_json), "guided_json"))
    if body.guided_regex is not None:
        found.append(StructuredOutput(StructuredKind.REGEX, body.guided_regex, "guided_regex"))
    if body.guided_choice is not None:
        found.append(StructuredOutput.choice(body.guided_choice, "guided_choice"))
    if body.guided_grammar is not None:
        found.append(
            StructuredOutput(StructuredKind.GRAMMAR, body.guided_grammar, "guided_grammar")
        )
    outputs = body.structured_outputs
    if outputs is not None:
        found += _structured_outputs(outputs)
    if len(found) > 1:
        names = ", ".join(f"'{spec.param}'" for spec in found)
        _fail(found[1].param, f"{names} each constrain the output; send one of them")
    return found[0] if found else None


def _structured_outputs(outputs: StructuredOutputs) -> list[StructuredOutput]:
    where = "structured_outputs"
    for name in ("whitespace_pattern", "structural_tag"):
        if getattr(outputs, name) is not None:
            _fail(f"{where}.{name}", f"'{where}.{name}' is not supported by this server")
    found: list[StructuredOutput] = []
    if outputs.json is not None:
        found.append(StructuredOutput.json_schema(_schema(outputs.json), f"{where}.json"))
    if outputs.regex is not None:
        found.append(StructuredOutput(StructuredKind.REGEX, outputs.regex, f"{where}.regex"))
    if outputs.choice is not None:
        found.append(StructuredOutput.choice(outputs.choice, f"{where}.choice"))
    if outputs.grammar is not None:
        found.append(StructuredOutput(StructuredKind.GRAMMAR, outputs.grammar, f"{where}.grammar"))
    if outputs.json_object:
        found.append(StructuredOutput(StructuredKind.JSON_OBJECT, "", f"{where}.json_object"))
    return found


def _schema(value: object) -> object:
    """vLLM takes a schema as an object or as its JSON text."""
    if isinstance(value, str):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value  # `StructuredOutput.json_schema` says it is not an object
    return value


def _or(value: V | None, default: V) -> V:
    return default if value is None else value


def _integer(
    name: str, value: int | float | None, *, low: int | None = None, high: int | None = None
) -> int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if not (value.is_integer() and abs(value) <= _EXACT_FLOAT_INTEGERS):
            _fail(name, f"'{name}' must be an integer, not a number", "invalid_type")
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, f"'{name}' must be {_range(low, high)}, got {value}")
    return value


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(items) > MAX_STOP_STRINGS:
        _fail("stop", f"'stop' takes at most {MAX_STOP_STRINGS} entries, got {len(items)}")
    if not all(items):
        _fail("stop", "'stop' entries must not be empty")
    return items


def _messages(raw: list[Message] | None) -> list[dict[str, Any]]:
    if raw is None:
        _fail("messages", "'messages' is required", "missing_required_parameter")
    if not raw:
        _fail("messages", "'messages' must not be empty")
    roles = _CHAT_ROLES
    try:  # one comprehension for the common case (bodies may hold 100,000 messages)
        return [{"role": roles[message.role], "content": _plain(message)} for message in raw]
    except (KeyError, _PartsRefusedError):
        pass
    return [_message(message, index) for index, message in enumerate(raw)]


def _plain(message: Message) -> str:
    """A message's text when it is only role and content; else `_PartsRefusedError`."""
    content = message.content
    if content is None or message.tool_calls is not None or message.tool_call_id is not None:
        raise _PartsRefusedError()
    return content if isinstance(content, str) else _text(content)


def _message(message: Message, index: int) -> dict[str, Any]:
    """One message checked field by field (tool calls and results, or a refusal naming it)."""
    where = f"messages[{index}]"
    role = message.role
    if role == "tool":
        if message.tool_call_id is None:
            _fail(
                f"{where}.tool_call_id",
                f"'{where}.tool_call_id' is required in a tool message",
                "missing_required_parameter",
            )
        return {
            "role": "tool",
            "content": _content(message.content, where),
            "tool_call_id": message.tool_call_id,
            **({"name": message.name} if message.name is not None else {}),
        }
    if role not in _CHAT_ROLES:
        _fail(
            f"{where}.role",
            f"{where}.role {quoted(role)} is not supported; use one of "
            f"{', '.join(sorted([*_CHAT_ROLES, 'tool']))}",
        )
    if message.tool_calls is not None and role != "assistant":
        _fail(f"{where}.tool_calls", f"only assistant messages have tool_calls, not {role}")
    if message.tool_calls:
        content = None if message.content is None else _content(message.content, where)
        calls = [_assistant_call(call, f"{where}.tool_calls[{i}]")
                 for i, call in enumerate(message.tool_calls)]  # fmt: skip
        return {"role": "assistant", "content": content, "tool_calls": calls}
    return {"role": _CHAT_ROLES[role], "content": _content(message.content, where)}


def _content(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None:
        _fail(f"{where}.content", f"'{where}.content' is required", "missing_required_parameter")
    if isinstance(content, str):
        return content
    _check_parts(content, f"{where}.content")
    return _text(content)


def _assistant_call(call: AssistantToolCall, where: str) -> dict[str, Any]:
    """A call as chat templates take it: arguments as an object (transformers' convention),
    or as the text sent when that is not a JSON object."""
    if call.type != "function":
        _fail(f"{where}.type", f"{where}.type {quoted(call.type)} is not supported; 'function'")
    try:
        arguments: object = msgspec.json.decode(call.function.arguments)
    except msgspec.DecodeError:
        arguments = call.function.arguments
    if not isinstance(arguments, dict):
        arguments = call.function.arguments
    function = {"name": call.function.name, "arguments": arguments}
    return {"id": call.id, "type": "function", "function": function}


class _PartsRefusedError(Exception):
    pass


def _text(parts: list[ContentPart]) -> str:
    texts = [part.text for part in parts if part.type == "text" and part.text is not None]
    if len(texts) != len(parts):
        raise _PartsRefusedError()
    return "".join(texts)


def _check_parts(parts: list[ContentPart], where: str) -> None:
    for index, part in enumerate(parts):
        name = f"{where}[{index}]"
        if part.type != "text":
            shown = "no type" if part.type is None else f"type {quoted(part.type)}"
            _fail(name, f"{name} has {shown}; this model takes 'text' parts only")
        if part.text is None:
            _fail(f"{name}.text", f"'{name}.text' is required", "missing_required_parameter")


def _prompts(raw: msgspec.Raw) -> list[str | list[int]]:
    """The prompt's first bytes say its shape; that shape is then decoded in one pass."""
    head = bytes(memoryview(raw)[:64]).lstrip()
    if not head or head == b"null":
        _fail("prompt", "'prompt' is required", "missing_required_parameter")
    if head[:1] == b'"':
        return [decode_body(raw, str, FIELD_TEXT, "prompt")]
    if head[:1] != b"[":
        got = _SCALAR_NAMES.get(head[:1], "a number")
        _fail("prompt", f"'prompt' must be {FIELD_TEXT['prompt']}, not {got}", "invalid_type")
    first = head[1:].lstrip()[:1]
    if first == b"]":
        _fail("prompt", f"'prompt' must be {FIELD_TEXT['prompt']}, not an empty array")
    if first == b'"':
        return list(decode_body(raw, list[str], FIELD_TEXT, "prompt"))
    if first == b"[":
        return list(decode_body(raw, list[TokenIds], FIELD_TEXT, "prompt"))
    return [decode_body(raw, TokenIds, FIELD_TEXT, "prompt")]


def _fail(param: str, message: str, code: str = "invalid_value") -> NoReturn:
    raise BadRequestError(message, param=param, code=code)
