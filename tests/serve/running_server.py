"""Real `ember serve` processes on free ports, with the real default model on the CPU."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

MODEL = "SmolLM2-135M-Instruct-Q4_1"
# Loading the model on the 2-core CI machine takes 15 s, and far longer when the host is busy.
STARTUP_TIMEOUT = 300.0


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, timeout: float = 300.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="test", max_retries=0,
                             timeout=timeout)  # fmt: skip

    def async_client(self, timeout: float = 300.0) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="test", max_retries=0, timeout=timeout
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)

    def ready(self) -> dict[str, object]:
        body: dict[str, object] = self.get("/ready").json()
        return body

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent, as Prometheus would treat it)."""
        text = self.get("/metrics").text
        for line in text.splitlines():
            match = re.fullmatch(r"([^{\s]+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
        return 0.0

    def wait_metric(self, name: str, value: float, timeout: float = 60.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        current = self.metric(name, **labels)
        while current != value and time.monotonic() < deadline:
            time.sleep(0.1)
            current = self.metric(name, **labels)
        return current

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ember serve exited early:\n{self.log.read_text()}")
            try:
                if self.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"ember serve not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    log_dir: Path, *args: str, descriptor_limit: int | None = None, command: str = "serve"
) -> RunningServer:
    """`descriptor_limit`: the server's soft and hard RLIMIT_NOFILE, to run out of them;
    `command`: `serve` or `gateway`."""
    port = free_port()
    log = log_dir / f"ember-{command}-{port}.log"

    def limit_descriptors() -> None:
        if descriptor_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember.cli", command, "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit_descriptors,
        )
    server = RunningServer(process, port, log)
    try:
        server.wait_ready()
    except BaseException:
        server.process.kill()
        raise
    return server
