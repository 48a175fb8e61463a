"""`ember worker --gpus 0` on a real GPU (issue 20's one-GPU run, until a machine with two is
lent): the supervisor's one child sees only GPU 0, runs jobs from a real nats-server on CUDA
(the default model's shape with random weights), and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from ember.queue.job import JobKind, JobStatus
from ember.queue.job_store import JobQueue
from ember.queue.nats_server import EmbeddedNats
from tests.queue.queue_helpers import StoredResults, WorkerProcess, wait_until

pytestmark = pytest.mark.gpu
MODEL = "synthetic:smollm2-135m-q4_1"
JOBS = 64
_CHILD_READY = re.compile(r"worker (\S+) \(pid (\d+), CUDA_VISIBLE_DEVICES=(\S+)\) takes jobs from")


def completion_body(i: int) -> bytes:
    body = {"model": MODEL, "prompt": f"job {i}", "max_tokens": 16, "temperature": 0}
    return json.dumps(body).encode()


def test_one_worker_on_gpu_0_runs_jobs_and_sees_only_its_gpu(tmp_path: Path) -> None:
    pytest.importorskip("nats")

    async def run() -> None:
        with EmbeddedNats(tmp_path / "nats") as server:
            queue = await JobQueue.connect(server.url)
            stores = await StoredResults().start(server.url)
            # Later flags win: the synthetic model, and info logs for the child's ready line.
            supervisor = WorkerProcess(
                tmp_path, server.url, "--model", MODEL, "--gpus", "0", "--worker-name", "one",
                "--max-concurrent-jobs", "16", "--log-level", "info",
            )  # fmt: skip
            try:
                log = supervisor.log

                def ready() -> list[tuple[str, str, str]]:
                    return _CHILD_READY.findall(log.read_text(errors="replace"))

                await wait_until(
                    lambda: bool(ready()) or supervisor.process.poll() is not None, 180, "ready"
                )
                assert supervisor.process.poll() is None, supervisor.output()
                assert [(name, visible) for name, _, visible in ready()] == [("one-gpu0", "0")]
                started = time.monotonic()
                bodies = [completion_body(i) for i in range(JOBS)]
                jobs = await asyncio.gather(
                    *(queue.submit(JobKind.COMPLETION, "t", body) for body in bodies)
                )
                ids = [job.id for job, _ in jobs]
                await wait_until(lambda: len(stores.completed) == JOBS, 120, "jobs completed")
                seconds = time.monotonic() - started
                finished = [await queue.get(job_id) for job_id in ids]
                failed = [j for j in finished if j is None or j.status != JobStatus.COMPLETED]
                assert not failed, failed[:2]
                assert {j.worker for j in finished if j is not None} == {"one-gpu0"}
                assert stores.completed == {job_id: 1 for job_id in ids}
                print(f"{JOBS} jobs of 16 tokens on GPU 0 in {seconds:.2f} s")
                supervisor.terminate()
                assert await supervisor.wait(90) == 0, supervisor.output()
                assert "SIGTERM: stopping 1 GPU worker" in supervisor.output()
            finally:
                supervisor.kill()
            await stores.stop()
            await queue.close()

    asyncio.run(run())
