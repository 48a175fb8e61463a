"""The server's log: a client's text can neither forge a record nor flood one (issue 15).

A model name holding `\\n2026-01-01 00:00:00,000 INFO ember.serve: ...` used to reach the log
whole inside a 500's traceback, forging a record. The formatter is checked on its own, then
the log of a real server at `--log-level info` (which logs every request's line).
"""

from __future__ import annotations

import io
import logging
import socket

import httpx
import pytest

from ember.serve.log_format import FORMAT, EscapingFormatter, escaped
from tests.serve.running_server import RunningServer

FORGED_TIME = "2026-01-01 00:00:00,000"
FORGED = f"\n{FORGED_TIME} INFO ember.serve: forged"


def logged(emit: object) -> str:
    """What `emit(logger)` writes through the escaping formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(FORMAT))
    logger = logging.Logger("ember.test")
    logger.addHandler(handler)
    emit(logger)  # type: ignore[operator]
    return stream.getvalue()


def forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(FORGED_TIME)]


def test_a_message_with_newlines_and_escapes_stays_one_line() -> None:
    text = logged(lambda log: log.warning("model %s", "m" + FORGED + "\x1b[2J\ud800\u2028"))
    assert text.count("\n") == 1 and not forged_lines(text)
    assert "\\n2026-01-01" in text and "\\x1b[2J" in text and "\\ud800\\u2028" in text


def test_a_traceback_keeps_its_lines_but_not_the_clients() -> None:
    def fail_twice(log: logging.Logger) -> None:
        try:
            try:
                raise KeyError("m" + FORGED)
            except KeyError as error:
                raise ValueError("model " + "m" + FORGED + "x" * 10_000) from error
        except ValueError:
            log.exception("unexpected error serving %s", "POST /v1/chat/completions")

    text = logged(fail_twice)
    assert not forged_lines(text)
    assert text.count("Traceback (most recent call last):") == 2
    assert "The above exception was the direct cause of the following exception:" in text
    assert "in fail_twice" in text and "raise KeyError" in text  # frames and source lines
    value_line = next(line for line in text.splitlines() if line.startswith("ValueError: "))
    assert "\\n2026-01-01" in value_line and "(10056 characters)" in value_line
    assert len(value_line) < 700


def test_long_messages_are_cut() -> None:
    assert escaped("a" * 5000).endswith("... (5000 characters)")
    assert len(escaped("a" * 5000)) < 2100
    assert escaped("plain é text") == "plain é text"


@pytest.mark.slow  # the guarded server
def test_client_text_does_not_forge_a_record_in_the_servers_log(
    guarded_server: RunningServer,
) -> None:
    response = httpx.post(
        guarded_server.url + "/v1/completions",
        json={"model": "m" + FORGED, "prompt": "Hi", "max_tokens": 1},
        timeout=60,
    )
    assert response.status_code == 404
    assert (
        "'m\\n2026-01-01 00:00:00,000 INFO ember.serve: forged'"
        in response.json()["error"]["message"]
    )
    path = "/v1/models%0A2026-01-01%2000:00:00,000%20INFO%20ember.serve:%20forged"
    assert httpx.get(guarded_server.url + path).status_code == 404
    with socket.create_connection(("127.0.0.1", guarded_server.port)) as sock:
        sock.sendall(b"GET /v1/\x1b[2J\r\n2026 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    log = guarded_server.log.read_text()
    assert not forged_lines(log), log[-3000:]
    assert '"POST /v1/completions HTTP/1.1" 404' in log  # the access log is on, and escaped
