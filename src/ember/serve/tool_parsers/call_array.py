"""Ember's forced calls: `[{"name": "f", "parameters": {...}}, ...]`, never content.

The grammar Ember builds for `tool_choice: "required"` makes the model write this array, in
compact JSON (`", "` and `": "` separators); any whitespace is read all the same. The grammar
only lets it be cut short (a length limit), so anything that is not the whole array leaves no
calls at the end, which the caller turns into an error; the deltas sent by then stay sent.
"""

from __future__ import annotations

import enum

from ember.serve.tool_parsers import CallIds, ToolCall, ToolEvent
from ember.serve.tool_parsers.call_object import CallStream

_WHITESPACE = " \t\n\r"
_ARGUMENT_KEYS = frozenset({"parameters", "arguments"})


class _Place(enum.Enum):
    OPEN = enum.auto()  # before `[`
    FIRST = enum.auto()  # after `[`: `{` or `]`
    OBJECT = enum.auto()
    AFTER_OBJECT = enum.auto()  # `,` or `]`
    NEXT = enum.auto()  # after `,`: `{`
    CLOSED = enum.auto()  # after `]`: whitespace only
    BROKEN = enum.auto()


# What each place between objects takes, and where it leads.
_PUNCTUATION = {
    _Place.OPEN: {"[": _Place.FIRST},
    _Place.FIRST: {"{": _Place.OBJECT, "]": _Place.CLOSED},
    _Place.AFTER_OBJECT: {",": _Place.NEXT, "]": _Place.CLOSED},
    _Place.NEXT: {"{": _Place.OBJECT},
    _Place.CLOSED: {},
}


class CallArrayParser:
    def __init__(self, call_ids: CallIds) -> None:
        self._call_ids = call_ids
        self._place = _Place.OPEN
        self._stream: CallStream | None = None
        self._calls: list[ToolCall] = []

    @property
    def calls(self) -> list[ToolCall]:
        return [] if self._place == _Place.BROKEN else list(self._calls)

    def feed(self, text: str) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        rest = text
        while rest and self._place != _Place.BROKEN:
            if self._place == _Place.OBJECT:
                rest = self._object(rest, events)
            else:
                rest = self._punctuation(rest)
        return events

    def finish(self) -> list[ToolEvent]:
        if self._place != _Place.CLOSED:
            self._place = _Place.BROKEN
        return []

    def _punctuation(self, rest: str) -> str:
        for i, ch in enumerate(rest):
            if ch in _WHITESPACE:
                continue
            place = _PUNCTUATION[self._place].get(ch)
            if place is None:
                self._place = _Place.BROKEN
                return ""
            self._place = place
            if place == _Place.OBJECT:
                self._stream = CallStream(len(self._calls), self._call_ids, _ARGUMENT_KEYS)
                return rest[i:]
        return ""

    def _object(self, rest: str, events: list[ToolEvent]) -> str:
        stream = self._stream
        assert stream is not None
        taken, deltas = stream.feed(rest)
        events.extend(deltas)
        if stream.scan.failed or (stream.scan.closed and stream.call is None):
            self._place = _Place.BROKEN
            return ""
        if stream.scan.closed:
            assert stream.call is not None
            self._calls.append(stream.call)
            self._place = _Place.AFTER_OBJECT
        return rest[taken:]
