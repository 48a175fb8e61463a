"""The JSON bodies of `/v1/chat/completions` and `/v1/completions`, as msgspec decodes them.

Shapes only: which fields exist and their JSON types. What their values mean, and the checks
that need more than a type (ranges, fields that exclude each other), is `openai_requests`'s.
Every optional field takes `null` as absent, as OpenAI's clients send it; unknown fields are
skipped. `int | float` is an integer that may arrive as `2.0` (as Python clients write one).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

TokenId = Annotated[int, msgspec.Meta(ge=0)]
StopTokenId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
CacheSalt = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TokenIds = Annotated[list[TokenId], msgspec.Meta(min_length=1)]

# What a field must be, in words, where msgspec's type names (`str | array`) would not say;
# keys are paths with every index as `[]`.
FIELD_TEXT = {
    "messages": "an array of messages",
    "messages[]": "an object with 'role' and 'content'",
    "messages[].tool_calls": "an array of tool calls",
    "messages[].tool_calls[]": "an object with 'id' and 'function' ({'name', 'arguments'})",
    "tools": "an array of tools",
    "tools[]": "an object with 'type': 'function' and 'function'",
    "tools[].function": "an object with 'name' and optional 'description' and 'parameters'",
    "messages[].content": "a string or an array of text parts",
    "messages[].content[]": "an object with 'type' and 'text'",
    "stop": "a string or an array of strings",
    "stop_token_ids": "an array of token ids",
    "prompt": "a string, an array of strings, an array of token ids or an array of token-id arrays",
}


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ContentPart(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text, as the model wrote it


class AssistantToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class Message(msgspec.Struct, gc=False):
    role: str
    # Absent or null only in an assistant message that calls tools.
    content: str | list[ContentPart] | None = None
    tool_calls: list[AssistantToolCall] | None = None  # an assistant's
    tool_call_id: str | None = None  # a tool result's: the call it answers
    name: str | None = None


class FunctionDefinition(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDefinition
    type: str = "function"


class JsonSchemaFormat(msgspec.Struct):
    """OpenAI's `response_format.json_schema`: the schema under a name."""

    name: str | None = None
    schema: Any = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct):
    type: str = "text"  # "text", "json_object" or "json_schema"
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(msgspec.Struct):
    """vLLM's `structured_outputs`: one of its constraints."""

    json: Any = None
    regex: str | None = None
    choice: Any = None
    grammar: str | None = None
    json_object: bool | None = None
    # Refused when set: Ember does not take them.
    whitespace_pattern: Any = None
    structural_tag: Any = None


class GenerationBody(msgspec.Struct):
    """The fields both endpoints take."""

    model: str | None = None
    n: int | float | None = None
    max_tokens: int | float | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[StopTokenId] | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    request_timeout: float | None = None
    user: str | None = None
    cache_salt: CacheSalt | None = None  # vLLM's: shares cached prefixes only within a salt
    logit_bias: dict[str, Any] | None = None
    priority: int | float | None = None  # vLLM's: lower runs first; may only lower urgency
    # What the output must match: OpenAI's response_format, vLLM's structured_outputs and its
    # older guided_* fields (one of them at a time).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: Any = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: Any = None  # refused when set


class ChatBody(GenerationBody):
    messages: list[Message] | None = None
    max_completion_tokens: int | float | None = None
    logprobs: bool | None = None
    top_logprobs: int | float | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None  # "none", "auto", "required" or {"type": "function", ...}
    parallel_tool_calls: bool | None = None
    # Refused when set (OpenAI's older function calling); any JSON value.
    functions: Any = None
    function_call: Any = None


class CompletionBody(GenerationBody):
    # A string, strings, token ids or arrays of them: msgspec takes one array type per union,
    # so the prompt is decoded again once its first bytes tell which (`openai_requests`).
    prompt: msgspec.Raw = msgspec.Raw()
    logprobs: int | float | None = None
    echo: bool | None = None
    best_of: int | float | None = None
    suffix: Any = None
