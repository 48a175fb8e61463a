"""Tool calls in a model's output text, found as the text streams: one module per format.

A parser is fed the choice's text deltas in order and answers with what to send for them:
plain content, or OpenAI's `delta.tool_calls` entries (a call's first entry carries its id
and name, later ones fragments of its JSON arguments). `finish` flushes what was held back
(text that might have begun a call but did not). Feeding the text in any pieces gives the
same content, the same calls and the same joined arguments as feeding it whole.

Formats:
- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes,
  Qwen2.5, Qwen3 templates).
- `llama3_json`: `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`,
  several separated by `;` (Llama 3.1/3.2's JSON tool calling).
- `call_array`: the text Ember's grammar forces for `tool_choice: "required"`:
  `[{"name": ..., "parameters": {...}}, ...]`.
- `named_arguments`: the text Ember's grammar forces for a named `tool_choice`: that one
  function's arguments object.
"""

from __future__ import annotations

import enum
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class ToolCallFormat(enum.StrEnum):
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"
    CALL_ARRAY = "call_array"
    NAMED_ARGUMENTS = "named_arguments"


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One entry of OpenAI's `delta.tool_calls`: `index` is the call's place in the choice."""

    index: int
    id: str | None  # set in a call's first delta only
    name: str | None  # set in a call's first delta only
    arguments: str  # a fragment of the arguments' JSON text ("" in a first delta is fine)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


ToolEvent = ContentDelta | ToolCallDelta

# Makes a call's id (`call_` and random characters, as OpenAI's).
CallIds = Callable[[], str]


class ToolCallParser(Protocol):
    def feed(self, text: str) -> list[ToolEvent]:
        """What to send for this piece of the output."""
        ...

    def finish(self) -> list[ToolEvent]:
        """What is left to send at the end of the output."""
        ...

    @property
    def calls(self) -> list[ToolCall]:
        """The calls found so far, complete (arguments whole), in order.

        A call whose deltas began but whose arguments never closed (the output was cut short,
        or its JSON broke) is not here: its index is then missing from the list.
        """
        ...


_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def parser_for(
    format: ToolCallFormat, call_ids: CallIds, function_name: str | None = None
) -> ToolCallParser:
    """A parser of one choice's output; `function_name`, the named function's, is what
    `named_arguments` needs (the other formats read the name from the output)."""
    # Imported here: the format modules import this package's types.
    from ember.serve.tool_parsers.call_array import CallArrayParser
    from ember.serve.tool_parsers.hermes import HermesParser
    from ember.serve.tool_parsers.llama3_json import Llama3JsonParser
    from ember.serve.tool_parsers.named_arguments import NamedArgumentsParser

    if format == ToolCallFormat.HERMES:
        return HermesParser(call_ids)
    if format == ToolCallFormat.LLAMA3_JSON:
        return Llama3JsonParser(call_ids)
    if format == ToolCallFormat.CALL_ARRAY:
        return CallArrayParser(call_ids)
    if function_name is None:
        raise ValueError("parser_for('named_arguments') needs the function's name")
    return NamedArgumentsParser(call_ids, function_name)
