"""The server's log lines: one record per line, whatever text a client sent.

A record's message and its exception's message may hold a client's text (a path, a model name
in an error); a newline there could forge a record (`\\n2026-01-01 00:00:00,000 INFO ...`), an
ANSI escape could rewrite a terminal, and a lone surrogate would make the handler fail. Every
record goes through `EscapingFormatter`: control characters, line separators and surrogates
become `repr`-style escapes, and long texts are cut. Tracebacks keep their lines, which come
from source files, with each exception's message escaped.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Longer messages are cut: a record should never carry a request body.
MAX_MESSAGE_CHARS = 2_000
MAX_EXCEPTION_CHARS = 500

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Python's own words between the tracebacks of a chain (traceback.py).
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def escaped(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line: unsafe characters as escapes, cut to `limit` characters."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escaped(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:  # noqa: N802 - logging's name
        _, error, _ = ei
        if error is None:
            return ""
        return "\n".join(_traceback_lines(error))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join(escaped(line) for line in stack_info.splitlines())


def _traceback_lines(error: BaseException) -> list[str]:
    """Python's traceback of `error` and its chain, with each exception's message escaped."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    link: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    lines: list[str] = []
    for exception, link in reversed(chain):
        if exception.__traceback__ is not None:
            lines.append("Traceback (most recent call last):")
            for frame in traceback.extract_tb(exception.__traceback__).format():
                lines.extend(escaped(line) for line in frame.rstrip("\n").split("\n"))
        lines.append(_exception_line(exception))
        if link is not None:
            lines += ["", link, ""]
    return lines


def _exception_line(exception: BaseException) -> str:
    name = type(exception).__qualname__
    module = type(exception).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    try:
        message = str(exception)
    except Exception:  # a broken __str__ must not lose the traceback
        message = "<the exception's message could not be shown>"
    return f"{name}: {escaped(message, MAX_EXCEPTION_CHARS)}" if message else name


def configure_logging(level: str) -> None:
    """One handler on the root logger (uvicorn's loggers included) with the escaping format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
