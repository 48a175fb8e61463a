"""JSON bytes decoded straight into typed structs; what msgspec refuses becomes a 400.

msgspec names the value it refused by a path (`$.messages[0].content`); that path, less the
`$.`, is the error's OpenAI `param`, and the message says what the field must be.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from ember.serve.api_errors import BadRequestError, quoted

T = TypeVar("T")

_ERROR = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]*)`, got `(?P<got>[^`]*)`")
_OUT_OF_BOUNDS = re.compile(r"Expected `[^`]*` (?P<bound>[<>]=? -?\d+)")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_SHORT_OR_LONG = re.compile(r"Expected `[^`]*` of length (?P<op>[<>]=) (?P<count>\d+)")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_INDEX = re.compile(r"\[\d+\]")
# JSON may escape a UTF-16 surrogate without its pair ("\ud800"); no UTF-8 text holds one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_BOM = b"\xef\xbb\xbf"
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_JSON_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def decode_body(
    data: bytes | msgspec.Raw, into: type[T], field_text: Mapping[str, str], at: str = ""
) -> T:
    """`data` as an `into`; `at` is where `data` sits in the request body ('' for all of it)."""
    if isinstance(data, bytes) and data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]  # RFC 8259 lets a parser skip it; Python's json does
    try:
        return msgspec.json.decode(data, type=into)
    except msgspec.ValidationError as error:
        raise _invalid(str(error), bytes(data), field_text, at) from None
    except msgspec.DecodeError as error:
        raise _malformed(str(error), bytes(data), at) from None
    except RecursionError:
        raise BadRequestError("the request body nests too deeply", code="invalid_json") from None


def _invalid(message: str, data: bytes, field_text: Mapping[str, str], at: str) -> BadRequestError:
    match = _ERROR.fullmatch(message)
    assert match is not None  # every string matches
    problem, path = match["problem"], match["path"] or ""
    param = (at + path).removeprefix(".")
    if not param:
        wrong = _WRONG_TYPE.fullmatch(problem)
        got = f", not {_json_name(wrong['got'])}" if wrong else f": {problem}"
        return BadRequestError(f"the request body must be a JSON object{got}", code="invalid_json")
    if missing := _MISSING.fullmatch(problem):
        param = f"{param}.{missing['field']}"
        return BadRequestError(
            f"'{param}' is required", param=param, code="missing_required_parameter"
        )
    key = _INDEX.sub("[]", param)
    if wrong := _WRONG_TYPE.fullmatch(problem):
        got, whole = _json_name(wrong["got"]), _whole(param, key)
        if key in field_text:
            message, whole = f"'{param}' must be {field_text[key]}, not {got}", param
        elif whole != param and _INDEX.sub("[]", whole) in field_text:
            message = f"'{whole}' must be {field_text[_INDEX.sub('[]', whole)]}; {param} is {got}"
        else:
            message = f"'{param}' must be {_expected(wrong['expected'])}, not {got}"
        return BadRequestError(message, param=whole, code="invalid_type")
    if bounds := _SHORT_OR_LONG.match(problem):
        least = "at least" if bounds["op"] == ">=" else "at most"
        count = int(bounds["count"])
        items = f"{count} item" + ("" if count == 1 else "s")
        return BadRequestError(f"'{param}' must have {least} {items}", param=_whole(param, key))
    if bounds := _OUT_OF_BOUNDS.fullmatch(problem):
        value = _value_at(data, path)
        return BadRequestError(
            f"'{param}' must be {bounds['bound']}" + ("" if value is None else f", got {value}"),
            param=_whole(param, key),
        )
    if problem == "Integer value out of range":
        limit = sys.get_int_max_str_digits()
        return BadRequestError(
            f"'{param}' is an integer too large to read (more than {limit} digits)",
            param=_whole(param, key),
        )
    if problem == "Number out of range":
        return BadRequestError(
            f"'{param}' must be a finite number; this one is too large for a 64-bit float",
            param=_whole(param, key),
        )
    return BadRequestError(f"'{param}' is not valid: {problem}", param=param)


def _whole(param: str, key: str) -> str:
    """An item of an array of scalars is named by the array, as OpenAI's `param` does."""
    return param[: param.index("[")] if key.endswith("[]") and "." not in key else param


def _value_at(data: bytes, path: str) -> str | None:
    """The value at `path` ('.stop_token_ids[2]') of `data`, for a message: errors only."""
    try:
        value: object = msgspec.json.decode(data)
        for name, index in _STEP.findall(path):
            value = value[name] if name else value[int(index)]  # type: ignore[index]
    except (msgspec.DecodeError, LookupError, TypeError, RecursionError):
        return None
    return quoted(value)


def _json_name(msgspec_type: str) -> str:
    """`str` -> 'a string': msgspec's name of a JSON type, as an error message says it."""
    return _JSON_NAMES.get(msgspec_type, msgspec_type)


def _expected(types: str) -> str:
    names = [name for name in types.split(" | ") if name != "null"]
    if "int" in names and "float" in names:
        names.remove("float")  # `int | float`: an integer that may be written 2.0
    return " or ".join(_json_name(name) for name in names)


def _malformed(message: str, data: bytes, at: str) -> BadRequestError:
    if not at and not data.strip():
        return BadRequestError("the request body is empty; send a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(data):
        where = _lone_surrogate(data, at)
        if where is not None:
            return BadRequestError(
                f"'{where}' holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff "
                "without its pair), which is not a character; send text as UTF-8, or a "
                "character beyond U+FFFF as a surrogate pair",
                param=_whole(where, _INDEX.sub("[]", where)),
            )
    if "UTF-8" in message:
        return BadRequestError("the request body is not valid UTF-8", code="invalid_json")
    problem = message.removeprefix("JSON is malformed: ")
    if problem == "Input data was truncated":
        problem = "it ends before the JSON value does"
    return BadRequestError(f"the request body is not valid JSON: {problem}", code="invalid_json")


def _lone_surrogate(data: bytes, at: str) -> str | None:
    """Where in `data` a string holds a lone surrogate; Python's `json` accepts them."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, object]] = [(at, value)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or None
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if _SURROGATE.search(key):
                    return path or None
                if not _FIELD_NAME.fullmatch(key):  # a client's own key, not a field name
                    stack.append((f"{path}[...]", item))
                else:
                    stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None
