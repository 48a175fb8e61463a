"""SIGTERM drains: no new connections, in-flight requests finish within the grace period,
those still running after it end with an error event, and the server exits cleanly.

This server runs the engine `--in-process`, so the same test covers that mode too.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.running_server import MODEL, start_server
from tests.serve.test_worker_crash import StreamInBackground

# Long enough for the short stream to finish even when a CPU engine step takes seconds.
GRACE = 20.0


@pytest.mark.slow  # its own server and a drain of up to GRACE seconds
def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--in-process", "--shutdown-grace-period", str(GRACE))
    try:
        assert server.ready()["worker_pid"] == server.process.pid  # the engine is in-process
        chat = server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content

        endless = StreamInBackground(server)
        assert endless.first_token.wait(300)
        short = server.client().completions.create(
            model=MODEL,
            prompt="One, two,",
            max_tokens=2,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        first = next(iter(short))
        assert first.choices[0].text

        kept_alive = httpx.Client(base_url=server.url, timeout=30)
        assert kept_alive.get("/v1/models").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # A connection opened before the signal gets an answer: 503, then it closes.
        time.sleep(0.5)
        late = kept_alive.post("/v1/completions", json={"model": MODEL, "prompt": "Hi"})
        kept_alive.close()
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining", late.text
        assert late.headers["connection"] == "close"
        rest = list(short)
        assert rest[-1].choices[0].finish_reason == "length"  # finished despite the SIGTERM
        with pytest.raises(httpx.HTTPError):
            response = httpx.post(
                server.url + "/v1/completions",
                json={"model": MODEL, "prompt": "Hi", "max_tokens": 1},
                timeout=30,
            )
            response.raise_for_status()  # a 503 if the connection got through, else refused

        endless.join(GRACE + 60)
        assert endless.error is not None and "shut down before" in str(endless.error)
        assert time.monotonic() - signalled >= GRACE - 1
        assert server.process.wait(60) == 0
        assert "Traceback" not in server.log.read_text()
    finally:
        if server.process.poll() is None:
            server.process.kill()
