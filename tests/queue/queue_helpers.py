"""What the queue tests share: job bodies, `ember worker` processes, a count of stored results."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from ember.queue.job import JobKind, JobStatus
from ember.queue.job_store import JobQueue
from ember.queue.layout import STATE_BUCKET

TINY_MODEL = Path(__file__).parent.parent / "fixtures" / "tiny_llama.gguf"


def chat_body(i: int, max_tokens: int = 2, **fields: object) -> bytes:
    body = {"model": "tiny_llama", "messages": [{"role": "user", "content": f"job {i}"}],
            "max_tokens": max_tokens, "temperature": 0, **fields}  # fmt: skip
    return json.dumps(body).encode()


async def submit_many(queue: JobQueue, bodies: list[bytes], concurrency: int = 100) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(bodies), concurrency):
        chunk = bodies[start : start + concurrency]
        jobs = await asyncio.gather(*(queue.submit(JobKind.CHAT, "t", b) for b in chunk))
        ids.extend(job.id for job, _ in jobs)
    return ids


class StoredResults:
    """Every write of a completed state, seen on the bucket's subjects as it is published:
    how many times each job's result was stored."""

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        self._client: Client | None = None

    async def start(self, url: str) -> StoredResults:
        prefix = f"$KV.{STATE_BUCKET}."
        self._client = await nats.connect(url)

        async def seen(msg: Msg) -> None:
            if msg.data and json.loads(msg.data).get("status") == JobStatus.COMPLETED:
                self.completed[msg.subject[len(prefix) :]] += 1

        await self._client.subscribe(prefix + ">", cb=seen)
        await self._client.flush()
        return self

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()


class WorkerProcess:
    """`ember worker` on the tiny model, its output in a log file."""

    def __init__(self, log_dir: Path, nats_url: str, *args: str) -> None:
        self.log = log_dir / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ember.cli", "worker", "--nats", nats_url,
                 "--model", str(TINY_MODEL), "--log-level", "warning", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"the worker did not exit in {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


async def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)
