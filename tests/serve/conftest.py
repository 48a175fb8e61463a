"""Fixtures: one `ember serve` process shared by the tests that leave it as they found it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve.running_server import RunningServer, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server shared by every test that leaves it as it found it."""
    running = start_server(tmp_path_factory.mktemp("serve"), "--log-level", "warning")
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


# The guarded server's settings, small enough for tests to reach.
GUARDED_READ_TIMEOUT = 1.0
GUARDED_HEADER_BYTES = 16384
GUARDED_DESCRIPTOR_LIMIT = 256
ALLOWED_ORIGIN = "http://app.example:3000"
ALLOWED_HOST = "ember.internal"


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small connection bounds, a CORS origin, an extra host, info logs (every
    request's access line), and 256 file descriptors. Tests using it are marked slow."""
    running = start_server(
        tmp_path_factory.mktemp("guarded"),
        "--read-timeout",
        str(GUARDED_READ_TIMEOUT),
        "--max-header-bytes",
        str(GUARDED_HEADER_BYTES),
        "--allowed-origins",
        ALLOWED_ORIGIN,
        "--allowed-hosts",
        ALLOWED_HOST,
        "--log-level",
        "info",
        descriptor_limit=GUARDED_DESCRIPTOR_LIMIT,
    )
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()
