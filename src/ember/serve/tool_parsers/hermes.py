"""Hermes-style calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.

The Hermes, Qwen2.5 and Qwen3 templates tell the model to write each call as one such block,
the JSON on its own line; text outside blocks is content. A block that is not a call (its JSON
breaks, or it lacks a string name or object arguments) is given back as content, verbatim, up
to the character that showed it; the text from that character on is read as content again.
Once a call's first delta is out it stays a call: text that breaks its block after that is
content from the breaking character (from just after its object, when the object had closed).
Whitespace with only calls and the output's ends around it (the newline between Qwen's blocks)
is not content.
"""

from __future__ import annotations

import enum

from ember.serve.tool_parsers import CallIds, ToolEvent
from ember.serve.tool_parsers.call_object import CallsInText

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_WHITESPACE = " \t\n\r"
_ARGUMENT_KEYS = frozenset({"arguments"})


def held_prefix(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class _Place(enum.Enum):
    CONTENT = enum.auto()
    BEFORE_OBJECT = enum.auto()  # after `<tool_call>`, before its `{`
    OBJECT = enum.auto()
    AFTER_OBJECT = enum.auto()  # whitespace, then `</tool_call>`


class HermesParser(CallsInText):
    def __init__(self, call_ids: CallIds) -> None:
        super().__init__(call_ids, _ARGUMENT_KEYS)
        self._place = _Place.CONTENT
        self._held = ""  # content: a tail that might begin `<tool_call>`
        self._at_boundary = True  # at the output's start or just after a call's block
        self._space = ""  # whitespace between a boundary and `<tool_call>`, to give back
        self._block = ""  # the block's text since `<tool_call>`, to give back
        self._after = ""  # after the object: whitespace and a partial `</tool_call>`

    def feed(self, text: str) -> list[ToolEvent]:
        self._events = []
        rest = text
        while rest:
            if self._place == _Place.CONTENT:
                rest = self._content(rest)
            elif self._place == _Place.BEFORE_OBJECT:
                rest = self._before_object(rest)
            elif self._place == _Place.OBJECT:
                rest = self._object(rest)
            else:
                rest = self._after_object(rest)
        return self._events

    def finish(self) -> list[ToolEvent]:
        self._events = []
        if self._place == _Place.CONTENT:
            if not (self._at_boundary and self._next_index and not self._held.strip()):
                self._content_out(self._held)
        elif self._stream is None or not self._stream.started:
            self._content_out(self._space + OPEN_TAG + self._block)
        self._place, self._held, self._block, self._after = _Place.CONTENT, "", "", ""
        return self._events

    def _content(self, rest: str) -> str:
        text = self._held + rest
        if self._at_boundary:
            body = text.lstrip(_WHITESPACE)
            if not body or held_prefix(body, OPEN_TAG) == len(body):
                self._held = text
                return ""
            if body.startswith(OPEN_TAG):
                self._held, self._block, self._place = "", "", _Place.BEFORE_OBJECT
                self._space = text[: len(text) - len(body)]
                return body[len(OPEN_TAG) :]
            self._at_boundary = False
        start = text.find(OPEN_TAG)
        if start >= 0:
            self._content_out(text[:start])
            self._held, self._block, self._place = "", "", _Place.BEFORE_OBJECT
            return text[start + len(OPEN_TAG) :]
        keep = held_prefix(text, OPEN_TAG)
        self._content_out(text[: len(text) - keep])
        self._held = text[len(text) - keep :]
        return ""

    def _before_object(self, rest: str) -> str:
        start = len(rest) - len(rest.lstrip(_WHITESPACE))
        self._block += rest[:start]
        if start == len(rest):
            return ""
        if rest[start] != "{":
            return self._not_a_call(rest[start:])
        self._begin_call()
        self._place = _Place.OBJECT
        return rest[start:]

    def _object(self, rest: str) -> str:
        stream, taken = self._read_call(rest)
        self._block += rest[:taken]
        if stream.scan.failed or (stream.scan.closed and not stream.started):
            return self._not_a_call(rest[taken:])
        if stream.scan.closed:
            self._place, self._after = _Place.AFTER_OBJECT, ""
        return rest[taken:]

    def _after_object(self, rest: str) -> str:
        for i, ch in enumerate(rest):
            if self._after.lstrip(_WHITESPACE) or ch not in _WHITESPACE:
                tag_part = self._after.lstrip(_WHITESPACE) + ch
                if not CLOSE_TAG.startswith(tag_part):
                    return self._block_ends(self._after + rest[i:])
                if tag_part == CLOSE_TAG:
                    return self._block_ends(rest[i + 1 :])
            self._after += ch
        return ""

    def _not_a_call(self, rest: str) -> str:
        """The block broke at the start of `rest`: its text so far is content, unless its call
        had started (then the block's text was the call's)."""
        if self._stream is None or not self._stream.started:
            self._content_out(self._space + OPEN_TAG + self._block)
        return self._block_ends(rest)

    def _block_ends(self, rest: str) -> str:
        self._at_boundary = self._stream is not None and self._stream.started
        if self._at_boundary:
            self._next_index += 1
        self._stream, self._block, self._after, self._space = None, "", "", ""
        self._place = _Place.CONTENT
        return rest
