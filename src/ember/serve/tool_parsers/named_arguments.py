"""Ember's forced call of a named function: the whole output is that function's arguments.

For a named `tool_choice` the grammar makes the model write only the arguments object, so each
piece of text is an arguments fragment as it stands. The call is whole at the end if the text
is a JSON object; otherwise (the output was cut short) there is no call, which the caller turns
into an error.
"""

from __future__ import annotations

import json

from ember.serve.tool_parsers import CallIds, ToolCall, ToolCallDelta, ToolEvent


class NamedArgumentsParser:
    def __init__(self, call_ids: CallIds, function_name: str) -> None:
        self._call_ids = call_ids
        self._name = function_name
        self._id: str | None = None
        self._pieces: list[str] = []
        self._call: ToolCall | None = None

    @property
    def calls(self) -> list[ToolCall]:
        return [] if self._call is None else [self._call]

    def feed(self, text: str) -> list[ToolEvent]:
        events: list[ToolEvent] = self._first_delta()
        if text:
            self._pieces.append(text)
            events.append(ToolCallDelta(0, None, None, text))
        return events

    def finish(self) -> list[ToolEvent]:
        events: list[ToolEvent] = self._first_delta()
        assert self._id is not None
        arguments = "".join(self._pieces)
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            self._call = ToolCall(self._id, self._name, arguments)
        return events

    def _first_delta(self) -> list[ToolEvent]:
        if self._id is not None:
            return []
        self._id = self._call_ids()
        return [ToolCallDelta(0, self._id, self._name, "")]
