"""One call's JSON object, `{"name": ..., "arguments": {...}}`, checked as its text streams in.

`CallObjectScan` is a strict JSON scanner of one object that stops at the first character that
cannot continue it, and records where the outer object's `name` and arguments values lie.
`CallStream` turns that into OpenAI deltas: once the name is known and an arguments object
has begun, the call's first delta goes out and then every checked character of the arguments,
so the joined fragments are the arguments' text exactly. A name written after the arguments,
or arguments written as a JSON string holding an object, hold the call until its object closes,
and then it goes out whole.
"""

from __future__ import annotations

import json
import re

from ember.serve.tool_parsers import CallIds, ContentDelta, ToolCall, ToolCallDelta, ToolEvent

_WHITESPACE = " \t\n\r"
_DIGITS = "0123456789"
_HEX_DIGITS = "0123456789abcdefABCDEF"
_ESCAPES = '"\\/bfnrtu'
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')

# Scanner states: what the next character may be.
_OBJECT_OPEN = 0  # the outer `{`
_KEY_OR_CLOSE = 1  # after `{`
_KEY = 2  # after `,` in an object
_COLON = 3
_VALUE = 4  # after `:` or `,` in an array
_VALUE_OR_CLOSE = 5  # after `[`
_COMMA_OR_CLOSE = 6  # after a value
_STRING = 7
_ESCAPE = 8
_HEX = 9
_NUMBER = 10
_LITERAL = 11
_CLOSED = 12

# Number states (JSON's grammar: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?).
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRACTION, _N_E, _N_E_SIGN, _N_EXPONENT = range(8)
_NUMBER_ENDS = frozenset({_N_ZERO, _N_INT, _N_FRACTION, _N_EXPONENT})


def _number_step(state: int, ch: str) -> int | None:
    digit = ch in _DIGITS
    if state == _N_MINUS:
        return _N_ZERO if ch == "0" else _N_INT if digit else None
    if state in (_N_ZERO, _N_INT) and ch == ".":
        return _N_DOT
    if state in (_N_ZERO, _N_INT, _N_FRACTION) and ch in "eE":
        return _N_E
    if state == _N_E and ch in "+-":
        return _N_E_SIGN
    if not digit or state == _N_ZERO:
        return None
    return {_N_INT: _N_INT, _N_DOT: _N_FRACTION, _N_FRACTION: _N_FRACTION}.get(state, _N_EXPONENT)


class CallObjectScan:
    """Strict JSON of one object, fed in pieces; `text` is what it took of them.

    `name` is the outer `"name"` once its string value is complete; `arguments_start` and
    `arguments_end` bound the outer arguments value (under any of `argument_keys`) in `text`.
    A second outer `name` or arguments key fails the scan: which one a model meant is unknown.
    """

    def __init__(self, argument_keys: frozenset[str]) -> None:
        self.text = ""
        self.failed = False
        self.name: str | None = None
        self.arguments_start: int | None = None
        self.arguments_end: int | None = None
        self.name_before_arguments = False
        self._argument_keys = argument_keys
        self._state = _OBJECT_OPEN
        self._containers: list[str] = []  # "{" or "[" per open container
        self._string_is_key = False
        self._string_start = 0
        self._hex_left = 0
        self._number = _N_MINUS
        self._literal_left = ""
        self._key: str | None = None  # the outer object's current key
        self._value_start = 0  # where the outer object's current value began
        self._seen_keys: set[str] = set()

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    def feed(self, piece: str) -> int:
        """Takes characters of `piece` until the object closes or one cannot continue it
        (then `failed`); answers how many it took."""
        base = len(self.text)
        self.text += piece  # values are sliced from it; trimmed to what was taken below
        i = 0
        while i < len(piece) and not self.failed and self._state != _CLOSED:
            if self._state == _STRING:
                run = _STRING_RUN.match(piece, i)
                if run is not None:
                    i = run.end()
                    continue
            if self._take(piece[i], base + i):
                i += 1
        self.text = self.text[: base + i]
        return i

    def _take(self, ch: str, at: int) -> bool:
        """Advances on `ch` at offset `at`; False when `ch` must be read again (it ended a
        number) or failed the scan."""
        state = self._state
        if state == _STRING:
            self._string_char(ch, at)
        elif state == _ESCAPE:
            self._expect(ch in _ESCAPES)
            if ch == "u":
                self._state, self._hex_left = _HEX, 4
            else:
                self._state = _STRING
        elif state == _HEX:
            self._expect(ch in _HEX_DIGITS)
            self._hex_left -= 1
            if self._hex_left == 0:
                self._state = _STRING
        elif state == _NUMBER:
            step = _number_step(self._number, ch)
            if step is not None:
                self._number = step
            elif self._number in _NUMBER_ENDS:
                self._value_ended(at)
                return False
            else:
                self.failed = True
        elif state == _LITERAL:
            self._expect(ch == self._literal_left[0])
            self._literal_left = self._literal_left[1:]
            if not self._literal_left:
                self._value_ended(at + 1)
        elif ch in _WHITESPACE and state != _OBJECT_OPEN:
            pass
        else:
            self._structure(state, ch, at)
        return not self.failed

    def _expect(self, ok: bool) -> None:
        if not ok:
            self.failed = True

    def _structure(self, state: int, ch: str, at: int) -> None:
        if state == _OBJECT_OPEN:
            self._expect(ch == "{")
            self._containers.append("{")
            self._state = _KEY_OR_CLOSE
        elif state in (_KEY_OR_CLOSE, _KEY):
            if ch == '"':
                self._state, self._string_is_key, self._string_start = _STRING, True, at
            elif ch == "}" and state == _KEY_OR_CLOSE:
                self._close(at)
            else:
                self.failed = True
        elif state == _COLON:
            self._expect(ch == ":")
            self._state = _VALUE
        elif state in (_VALUE, _VALUE_OR_CLOSE):
            if ch == "]" and state == _VALUE_OR_CLOSE:
                self._close(at)
            else:
                self._value_begins(ch, at)
        elif state == _COMMA_OR_CLOSE:
            inner = self._containers[-1]
            if ch == ",":
                self._state = _KEY if inner == "{" else _VALUE
            elif ch == ("}" if inner == "{" else "]"):
                self._close(at)
            else:
                self.failed = True

    def _value_begins(self, ch: str, at: int) -> None:
        if len(self._containers) == 1:
            self._value_start = at
            if self._key in self._argument_keys:
                self.arguments_start = at
                self.name_before_arguments = self.name is not None
        if ch in "{[":
            self._containers.append(ch)
            self._state = _KEY_OR_CLOSE if ch == "{" else _VALUE_OR_CLOSE
        elif ch == '"':
            self._state, self._string_is_key, self._string_start = _STRING, False, at
        elif ch == "-" or ch in _DIGITS:
            self._state = _NUMBER
            self._number = _N_MINUS if ch == "-" else _N_ZERO if ch == "0" else _N_INT
        elif ch in "tfn":
            self._state = _LITERAL
            self._literal_left = {"t": "rue", "f": "alse", "n": "ull"}[ch]
        else:
            self.failed = True

    def _string_char(self, ch: str, at: int) -> None:
        if ch == "\\":
            self._state = _ESCAPE
        elif ch != '"':
            self.failed = True  # a control character: JSON wants it escaped
        elif self._string_is_key:
            self._state = _COLON
            if len(self._containers) == 1:
                self._outer_key(self._decoded(self._string_start, at + 1))
        else:
            self._value_ended(at + 1)

    def _outer_key(self, key: str) -> None:
        kind = "arguments" if key in self._argument_keys else key
        if kind in ("name", "arguments") and kind in self._seen_keys:
            self.failed = True
        self._seen_keys.add(kind)
        self._key = key

    def _close(self, at: int) -> None:
        self._containers.pop()
        if self._containers:
            self._value_ended(at + 1)
        else:
            self._state = _CLOSED

    def _value_ended(self, end: int) -> None:
        self._state = _COMMA_OR_CLOSE
        if len(self._containers) != 1:
            return
        start = self._value_start
        if self._key == "name":
            if self.text[start] == '"':
                self.name = self._decoded(start, end)
        elif self._key in self._argument_keys:
            self.arguments_end = end

    def _decoded(self, start: int, end: int) -> str:
        decoded = json.loads(self.text[start:end])
        assert isinstance(decoded, str)
        return decoded


def _whole_arguments(scan: CallObjectScan) -> str | None:
    """A closed object's arguments when they are an object or a JSON string holding one."""
    if scan.arguments_start is None or scan.arguments_end is None:
        return None
    arguments = scan.text[scan.arguments_start : scan.arguments_end]
    if arguments.startswith("{"):
        return arguments
    if not arguments.startswith('"'):
        return None
    inner = json.loads(arguments)
    assert isinstance(inner, str)
    try:
        value = json.loads(inner)
    except json.JSONDecodeError:
        return None
    return inner.strip() if isinstance(value, dict) else None


class CallStream:
    """The deltas of call `index` as its object's text arrives.

    `started` once its first delta went out (the client has it, whatever follows); `call` once
    its arguments are whole. An object that closes without being a call never starts: its text
    is the caller's to give back.
    """

    def __init__(self, index: int, call_ids: CallIds, argument_keys: frozenset[str]) -> None:
        self.scan = CallObjectScan(argument_keys)
        self.index = index
        self.call: ToolCall | None = None
        self._call_ids = call_ids
        self._id: str | None = None
        self._sent = 0  # offset in `scan.text` up to which arguments went out

    @property
    def started(self) -> bool:
        return self._id is not None

    def feed(self, piece: str) -> tuple[int, list[ToolCallDelta]]:
        """Takes characters of `piece` as `CallObjectScan.feed` does; answers how many, and
        the deltas they make."""
        taken = self.scan.feed(piece)
        scan = self.scan
        deltas: list[ToolCallDelta] = []
        if self._id is None and scan.name is not None and scan.name_before_arguments:
            start = scan.arguments_start
            if start is not None and scan.text[start] == "{":
                self._id = self._call_ids()
                self._sent = start
                deltas.append(ToolCallDelta(self.index, self._id, scan.name, ""))
        if self._id is not None and self.call is None:
            end = len(scan.text) if scan.arguments_end is None else scan.arguments_end
            if end > self._sent:
                deltas.append(ToolCallDelta(self.index, None, None, scan.text[self._sent : end]))
                self._sent = end
            if scan.arguments_end is not None:
                assert scan.name is not None and scan.arguments_start is not None
                arguments = scan.text[scan.arguments_start : scan.arguments_end]
                self.call = ToolCall(self._id, scan.name, arguments)
        elif self._id is None and scan.closed and scan.name is not None:
            whole = _whole_arguments(scan)
            if whole is not None:
                self._id = self._call_ids()
                self.call = ToolCall(self._id, scan.name, whole)
                deltas.append(ToolCallDelta(self.index, self._id, scan.name, whole))
        return taken, deltas


class CallsInText:
    """What a parser of calls written among text keeps (hermes, llama3_json): the events of the
    piece being fed, the calls found, the call being read and the next one's index."""

    def __init__(self, call_ids: CallIds, argument_keys: frozenset[str]) -> None:
        self._call_ids = call_ids
        self._argument_keys = argument_keys
        self._stream: CallStream | None = None
        self._calls: list[ToolCall] = []
        self._next_index = 0
        self._events: list[ToolEvent] = []

    @property
    def calls(self) -> list[ToolCall]:
        return list(self._calls)

    def _content_out(self, text: str) -> None:
        if text:
            self._events.append(ContentDelta(text))

    def _begin_call(self) -> None:
        self._stream = CallStream(self._next_index, self._call_ids, self._argument_keys)

    def _read_call(self, rest: str) -> tuple[CallStream, int]:
        """Feeds `rest` to the call being read: its deltas become events, its call (once
        whole) is found; the stream and how many characters it took."""
        stream = self._stream
        assert stream is not None
        taken, deltas = stream.feed(rest)
        self._events.extend(deltas)
        if stream.call is not None and (not self._calls or self._calls[-1] is not stream.call):
            self._calls.append(stream.call)
        return stream, taken
