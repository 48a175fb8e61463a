"""Llama 3.1/3.2 JSON calls: the whole output is `{"name": ..., "parameters": {...}}`.

Meta's template for JSON tool calling asks for exactly that object, optionally after
`<|python_tag|>`; several calls are separated by `;`. `arguments` is taken for `parameters`
too. An output that does not begin (after whitespace) with `{` or `<|python_tag|>` is content,
streamed at once. One that begins like a call but is not one is given back whole as content
when that shows; after a call has gone out, text that is not a further call is content from
the end of the last call on.
"""

from __future__ import annotations

import enum

from ember.serve.tool_parsers import CallIds, ToolEvent
from ember.serve.tool_parsers.call_object import CallsInText
from ember.serve.tool_parsers.hermes import held_prefix

PYTHON_TAG = "<|python_tag|>"
_WHITESPACE = " \t\n\r"
_ARGUMENT_KEYS = frozenset({"parameters", "arguments"})


class _Place(enum.Enum):
    START = enum.auto()  # whitespace and `<|python_tag|>` before the first `{`
    OBJECT = enum.auto()
    BETWEEN = enum.auto()  # whitespace, `;`, whitespace before the next `{`
    CONTENT = enum.auto()  # not calls: the rest streams as content


class Llama3JsonParser(CallsInText):
    def __init__(self, call_ids: CallIds) -> None:
        super().__init__(call_ids, _ARGUMENT_KEYS)
        self._place = _Place.START
        self._held = ""  # text since the last call (all of it before one): given back if no call
        self._separated = False  # BETWEEN has seen its `;`

    def feed(self, text: str) -> list[ToolEvent]:
        self._events = []
        rest = text
        while rest:
            if self._place == _Place.START:
                rest = self._start(rest)
            elif self._place == _Place.OBJECT:
                rest = self._object(rest)
            elif self._place == _Place.BETWEEN:
                rest = self._between(rest)
            else:
                self._content_out(rest)
                rest = ""
        return self._events

    def finish(self) -> list[ToolEvent]:
        self._events = []
        started = self._stream is not None and self._stream.started
        if self._place == _Place.START or (self._place == _Place.OBJECT and not started):
            self._content_out(self._held)
        self._held, self._place = "", _Place.CONTENT
        return self._events

    def _start(self, rest: str) -> str:
        self._held += rest
        text = self._held.lstrip(_WHITESPACE)
        if text.startswith(PYTHON_TAG):
            text = text[len(PYTHON_TAG) :].lstrip(_WHITESPACE)
        elif text and held_prefix(text, PYTHON_TAG) == len(text):
            return ""
        if not text:
            return ""
        if text[0] != "{":
            return self._not_calls("")
        self._held = self._held[: len(self._held) - len(text)]
        return self._object_begins(text)

    def _object_begins(self, rest: str) -> str:
        self._begin_call()
        self._place = _Place.OBJECT
        return rest

    def _object(self, rest: str) -> str:
        stream, taken = self._read_call(rest)
        if stream.started:
            self._held = ""
        else:
            self._held += rest[:taken]
        if stream.scan.failed or (stream.scan.closed and not stream.started):
            return self._not_calls(rest[taken:])
        if stream.scan.closed:
            self._next_index += 1
            self._place, self._separated = _Place.BETWEEN, False
        return rest[taken:]

    def _between(self, rest: str) -> str:
        for i, ch in enumerate(rest):
            if ch == "{" and self._separated:
                return self._object_begins(rest[i:])
            if ch == ";" and not self._separated:
                self._separated = True
            elif ch not in _WHITESPACE:
                return self._not_calls(rest[i:])
            self._held += ch
        return ""

    def _not_calls(self, rest: str) -> str:
        """The text broke at the start of `rest`: what was held is content, and all after it."""
        self._content_out(self._held)
        self._held, self._stream, self._place = "", None, _Place.CONTENT
        return rest
