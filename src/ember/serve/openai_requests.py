"""OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) checked into typed requests.

Fields follow OpenAI's API; `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
`stop_token_ids`, `include_stop_str_in_output` and `skip_special_tokens` are accepted as vLLM
accepts them, and `request_timeout` (seconds) can lower the server's deadline for one request.
Unknown fields are ignored, as OpenAI-compatible servers do; fields that would change the
answer in ways Ember cannot honour (tools, logit_bias, JSON mode...) are refused with a 400.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ember.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from ember.errors import SamplingParamsError
from ember.serve.api_errors import BadRequestError
from ember.serve.request_fields import RequestFields, json_type

MAX_STOP_STRINGS = 16
_SEED_RANGE = 2**63
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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

    def params_for(self, max_tokens: int, choice: int) -> SamplingParams:
        """Choice `i` of a seeded request uses seed + i, so the n choices differ but repeat."""
        seed = self.params.seed
        if seed is not None:
            seed = (seed + choice) % _SEED_RANGE
        return dataclasses.replace(self.params, max_tokens=max_tokens, seed=seed)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    options: GenerationOptions


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    echo: bool
    options: GenerationOptions


def parse_model(body: dict[str, Any]) -> str:
    fields = RequestFields(body)
    model = fields.require("model")
    if not isinstance(model, str):
        fields.wrong_type("model", "a string", model)
    return model


def parse_chat_request(body: dict[str, Any], max_choices: int) -> ChatRequest:
    fields = RequestFields(body)
    for name in ("tools", "functions"):
        if body.get(name):
            fields.fail(name, f"'{name}' (tool calling) is not supported by this server")
    logprobs = fields.boolean("logprobs")
    top_logprobs = fields.integer("top_logprobs", low=0, high=MAX_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        fields.fail("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return ChatRequest(
        model=parse_model(body),
        messages=_messages(fields),
        options=_options(fields, max_choices, (top_logprobs or 0) if logprobs else None, chat=True),
    )


def parse_completion_request(body: dict[str, Any], max_choices: int) -> CompletionRequest:
    fields = RequestFields(body)
    if body.get("suffix") is not None:
        fields.fail("suffix", "'suffix' (insertion) is not supported by this server")
    logprobs = fields.integer("logprobs", low=0, high=MAX_LOGPROBS)
    echo = fields.boolean("echo")
    if echo and logprobs is not None:
        fields.fail("echo", "'echo' with 'logprobs' needs prompt logprobs, which Ember lacks")
    options = _options(fields, max_choices, logprobs, chat=False)
    best_of = fields.integer("best_of", low=1)
    if best_of is not None and best_of != options.n:
        fields.fail("best_of", "'best_of' other than 'n' is not supported by this server")
    prompts = _prompts(fields)
    if len(prompts) * options.n > max_choices:
        fields.fail(
            "n",
            f"{len(prompts)} prompts x n={options.n} is {len(prompts) * options.n} "
            f"sequences; this server allows {max_choices} per request",
        )
    return CompletionRequest(parse_model(body), prompts, echo, options)


def _options(
    fields: RequestFields, max_choices: int, logprobs: int | None, *, chat: bool
) -> GenerationOptions:
    _refuse_unsupported(fields, chat)
    n = fields.integer("n", low=1, high=max_choices) or 1
    limit_name = "max_completion_tokens" if chat and fields.has("max_completion_tokens") else None
    max_tokens = fields.integer(limit_name or "max_tokens", low=1)
    stream = fields.boolean("stream")
    stream_options = fields.object("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            fields.fail("stream_options", "'stream_options' is only allowed with 'stream': true")
        usage = stream_options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            fields.wrong_type("stream_options.include_usage", "a boolean", usage)
        include_usage = bool(usage)
    seed = fields.integer("seed")
    try:
        params = SamplingParams(
            max_tokens=1,
            temperature=_number(fields, "temperature", 1.0),
            top_p=_number(fields, "top_p", 1.0),
            top_k=fields.integer("top_k", 0, low=-1) or 0,
            min_p=_number(fields, "min_p", 0.0),
            repetition_penalty=_number(fields, "repetition_penalty", 1.0),
            presence_penalty=_number(fields, "presence_penalty", 0.0),
            frequency_penalty=_number(fields, "frequency_penalty", 0.0),
            seed=seed,
            stop=fields.strings("stop", MAX_STOP_STRINGS),
            stop_token_ids=fields.integers("stop_token_ids", low=0, high=2**31 - 1),
            ignore_eos=fields.boolean("ignore_eos"),
            include_stop_str_in_output=fields.boolean("include_stop_str_in_output"),
            logprobs=logprobs,
            skip_special_tokens=fields.boolean("skip_special_tokens", True),
        )
    except SamplingParamsError as error:
        message = str(error)
        raise BadRequestError(message, param=message.split(" ", 1)[0]) from None
    return GenerationOptions(
        params=params,
        max_tokens=max_tokens,
        n=n,
        stream=stream,
        include_usage=include_usage,
        timeout=fields.number("request_timeout", low=0.001),
        user=fields.string("user"),
    )


def _number(fields: RequestFields, name: str, default: float) -> float:
    value = fields.number(name, default)
    assert value is not None
    return value


def _refuse_unsupported(fields: RequestFields, chat: bool) -> None:
    body = fields.body
    logit_bias = fields.object("logit_bias")
    if logit_bias:
        fields.fail("logit_bias", "'logit_bias' is not supported by this server")
    if chat:
        response_format = fields.object("response_format")
        if response_format is not None and response_format.get("type", "text") != "text":
            fields.fail(
                "response_format",
                f"response_format type {response_format.get('type')!r} is not supported; "
                "only 'text'",
            )
        tool_choice = body.get("tool_choice")
        if tool_choice not in (None, "none"):
            fields.fail("tool_choice", "'tool_choice' is not supported by this server")


def _messages(fields: RequestFields) -> list[dict[str, str]]:
    raw = fields.require("messages")
    if not isinstance(raw, list):
        fields.wrong_type("messages", "an array of messages", raw)
    if not raw:
        fields.fail("messages", "'messages' must not be empty")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            fields.wrong_type(where, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if not isinstance(role, str):
            fields.wrong_type(f"{where}.role", "a string", role)
        if role not in _CHAT_ROLES:
            fields.fail(
                f"{where}.role",
                f"{where}.role {role!r} is not supported; use one of "
                f"{', '.join(sorted(_CHAT_ROLES))}",
            )
        content = _content_text(fields, where, message.get("content"))
        messages.append({"role": _CHAT_ROLES[role], "content": content})
    return messages


def _content_text(fields: RequestFields, where: str, content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        fields.wrong_type(f"{where}.content", "a string or an array of text parts", content)
    texts: list[str] = []
    for index, part in enumerate(content):
        name = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            fields.wrong_type(name, "an object", part)
        kind = part.get("type")
        if kind != "text":
            fields.fail(name, f"{name} has type {kind!r}; this model takes 'text' parts only")
        text = part.get("text")
        if not isinstance(text, str):
            fields.wrong_type(f"{name}.text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _prompts(fields: RequestFields) -> list[str | list[int]]:
    raw = fields.require("prompt")
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        fields.fail(
            "prompt",
            "'prompt' must be a string, an array of strings, an array of token ids or an "
            f"array of token-id arrays, not {'an empty array' if raw == [] else json_type(raw)}",
            "invalid_type",
        )
    if all(isinstance(item, str) for item in raw):
        return list(raw)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in raw):
        return [_token_ids(fields, raw)]
    if all(isinstance(item, list) for item in raw):
        return [_token_ids(fields, item) for item in raw]
    fields.fail("prompt", "'prompt' mixes strings, token ids and arrays", "invalid_type")


def _token_ids(fields: RequestFields, items: list[Any]) -> list[int]:
    if not items:
        fields.fail("prompt", "a token-id prompt must not be empty")
    return [fields.check_integer("prompt", item, low=0) for item in items]
