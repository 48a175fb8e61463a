"""Typed access to a JSON request body: each getter checks one field and names it on failure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from ember.serve.api_errors import BadRequestError

_JSON_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; `BadRequestError` for anything else."""
    if not body.strip():
        raise BadRequestError("the request body is empty; send a JSON object", code="invalid_json")
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequestError("the request body is not valid UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as error:
        raise BadRequestError(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise BadRequestError("the request body nests too deeply", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not {json_type(value)}", code="invalid_json"
        )
    return value


def _reject_constant(name: str) -> NoReturn:
    raise BadRequestError(f"{name} is not valid JSON", code="invalid_json")


def json_type(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


class RequestFields:
    """The fields of one request body."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def fail(self, name: str, message: str, code: str = "invalid_value") -> NoReturn:
        raise BadRequestError(message, param=name, code=code)

    def wrong_type(self, name: str, expected: str, value: object) -> NoReturn:
        self.fail(name, f"'{name}' must be {expected}, not {json_type(value)}", "invalid_type")

    def require(self, name: str) -> object:
        value = self.body.get(name)
        if value is None:
            self.fail(name, f"'{name}' is required", "missing_required_parameter")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            self.wrong_type(name, "a string", value)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.wrong_type(name, "a boolean", value)
        return value

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        return self.check_integer(name, value, low=low, high=high)

    def check_integer(
        self, name: str, value: object, *, low: int | None = None, high: int | None = None
    ) -> int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(name, "an integer", value)
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(name, f"'{name}' must be {_range(low, high)}, got {value}")
        return value

    def number(
        self,
        name: str,
        default: float | None = None,
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> float | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(name, "a number", value)
        number = float(value)
        if not math.isfinite(number):
            self.fail(name, f"'{name}' must be a finite number")
        if (low is not None and number < low) or (high is not None and number > high):
            self.fail(name, f"'{name}' must be {_range(low, high)}, got {value}")
        return number

    def object(self, name: str) -> Mapping[str, Any] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.wrong_type(name, "an object", value)
        return value

    def strings(self, name: str, max_items: int) -> tuple[str, ...]:
        """A string or an array of non-empty strings (as `stop` takes)."""
        value = self.body.get(name)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.wrong_type(name, "a string or an array of strings", value)
        if len(items) > max_items:
            self.fail(name, f"'{name}' takes at most {max_items} entries, got {len(items)}")
        for item in items:
            if not isinstance(item, str):
                self.wrong_type(name, "a string or an array of strings", item)
            if not item:
                self.fail(name, f"'{name}' entries must not be empty")
        return tuple(items)

    def integers(self, name: str, *, low: int, high: int) -> tuple[int, ...]:
        value = self.body.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type(name, "an array of integers", value)
        return tuple(self.check_integer(name, item, low=low, high=high) for item in value)


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        return f">= {low}"
    return f"<= {high}"
