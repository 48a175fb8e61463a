"""What `ember worker` sends its local server, and how it reads the server's errors."""

from __future__ import annotations

import json

import pytest

from ember.queue.job import JobError
from ember.serve.queue_worker import job_error, non_streaming_body


def test_a_jobs_body_is_sent_without_streaming() -> None:
    body = b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}, "n": 2}'
    assert json.loads(non_streaming_body(body)) == {"model": "m", "stream": False, "n": 2}
    with pytest.raises(ValueError, match="not JSON"):
        non_streaming_body(b"{nope")
    with pytest.raises(ValueError, match="JSON object"):
        non_streaming_body(b"[1, 2]")
    with pytest.raises(ValueError, match="not JSON"):
        non_streaming_body(b"\xff\xfe")


def test_the_servers_error_becomes_the_jobs() -> None:
    answer = {"error": {"message": "bad", "type": "invalid_request_error", "param": "messages",
                        "code": "invalid_type"}}  # fmt: skip
    assert job_error(400, json.dumps(answer).encode()) == JobError(
        400, "bad", "invalid_request_error", "messages", "invalid_type"
    )
    plain = job_error(502, b"<html>bad gateway</html>")
    assert plain.status == 502 and "bad gateway" in plain.message
    assert plain.type == "server_error"
