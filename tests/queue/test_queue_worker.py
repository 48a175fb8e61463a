"""`ember worker` processes on the tiny model against a real nats-server: jobs completed, kill -9
with jobs in flight, poison jobs, generations longer than the ack wait, SIGTERM, idle exit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ember.queue.job import JobKind, JobStatus
from ember.queue.job_store import JobQueue
from ember.queue.layout import QueueSettings
from ember.queue.nats_server import EmbeddedNats
from tests.queue.queue_helpers import (
    StoredResults,
    WorkerProcess,
    chat_body,
    submit_many,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_jobs_complete_poison_jobs_fail_and_the_worker_exits_when_idle(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = QueueSettings(max_deliver=3, retry_delay_seconds=0.2)

    async def main() -> None:
        queue = await JobQueue.connect(nats.url, settings)
        stores = await StoredResults().start(nats.url)
        good = await submit_many(queue, [chat_body(i) for i in range(250)])
        completion = {"model": "tiny_llama", "prompt": "once", "max_tokens": 3, "stream": True}
        text, _ = await queue.submit(JobKind.COMPLETION, "t", json.dumps(completion).encode())
        rejected, _ = await queue.submit(
            JobKind.CHAT, "t", b'{"model": "tiny_llama", "messages": 3}'
        )
        not_json, _ = await queue.submit(JobKind.CHAT, "t", b"{not json")
        # Always past its deadline: a 504 each time, retried until max_deliver.
        late, _ = await queue.submit(JobKind.CHAT, "t", chat_body(
            0, max_tokens=200, ignore_eos=True, request_timeout=0.001))  # fmt: skip
        worker = WorkerProcess(tmp_path, nats.url, "--idle-timeout", "2")
        assert await worker.wait(180) == 0, worker.output()

        for job_id in [*good, text.id]:
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.COMPLETED, (job, worker.output())
            assert job.attempts == 1
            answer = json.loads(await queue.result_bytes(job) or b"")
            assert answer["object"] == (
                "text_completion" if job_id == text.id else "chat.completion"
            )
        assert stores.completed == {job_id: 1 for job_id in [*good, text.id]}

        for job_id, status in ((rejected.id, 400), (not_json.id, 400)):
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.FAILED and job.attempts == 1
            assert job.error is not None and job.error.status == status
            assert job.error.type == "invalid_request_error"
        failed_late = await queue.get(late.id)
        assert failed_late is not None and failed_late.status == JobStatus.FAILED
        assert failed_late.attempts == 3
        assert failed_late.error is not None and failed_late.error.status >= 500
        depth = await queue.depth()
        assert (depth.total, depth.dead_letters) == (0, 1)
        await stores.stop()
        await queue.close()

    asyncio.run(main())


def test_kill_9_of_a_worker_with_1000_jobs_loses_none_and_stores_each_once(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = QueueSettings(ack_wait_seconds=2.0, retry_delay_seconds=0.2)

    async def main() -> None:
        queue = await JobQueue.connect(nats.url, settings)
        stores = await StoredResults().start(nats.url)
        ids = await submit_many(queue, [chat_body(i, max_tokens=1) for i in range(1000)])
        first = WorkerProcess(tmp_path, nats.url, "--max-concurrent-jobs", "32")
        try:
            await wait_until(lambda: len(stores.completed) >= 200, 120, "200 jobs completed")
        finally:
            first.kill()
        assert len(stores.completed) < 1000, "the worker finished before it was killed"
        second = WorkerProcess(tmp_path, nats.url, "--idle-timeout", "3")
        assert await second.wait(180) == 0, second.output()

        assert set(stores.completed) == set(ids)
        assert set(stores.completed.values()) == {1}
        for job_id in ids:
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.COMPLETED
        assert (await queue.depth()).total == 0
        await stores.stop()
        await queue.close()

    asyncio.run(main())


def test_a_generation_longer_than_the_ack_wait_is_delivered_once_and_sigterm_finishes_it(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    # The job takes ~0.8 s on a 2-core machine: two ack waits (it took more than 1 s when
    # the machines were busier, and the ack wait was 1 s).
    settings = QueueSettings(ack_wait_seconds=0.4)

    async def main() -> None:
        queue = await JobQueue.connect(nats.url, settings)
        stores = await StoredResults().start(nats.url)
        # 16 choices of 200 tokens, one sequence at a time: several ack waits long.
        body = chat_body(0, max_tokens=200, ignore_eos=True, n=16)
        job, _ = await queue.submit(JobKind.CHAT, "t", body)
        worker = WorkerProcess(tmp_path, nats.url, "--max-num-seqs", "1")
        try:
            await wait_until(lambda: _status(queue, job.id, JobStatus.IN_PROGRESS), 120,
                             "the job runs")  # fmt: skip
            await asyncio.sleep(1.25 * settings.ack_wait_seconds)  # past the ack wait
            assert await _status(queue, job.id, JobStatus.IN_PROGRESS)  # still running
            worker.terminate()  # stops fetching, lets the running job finish
            assert await worker.wait(120) == 0, worker.output()
        finally:
            worker.kill()
        done = await queue.get(job.id)
        assert done is not None and done.status == JobStatus.COMPLETED, worker.output()
        assert done.attempts == 1 and stores.completed == {job.id: 1}
        assert done.started_at is not None and done.finished_at is not None
        assert done.finished_at - done.started_at > settings.ack_wait_seconds
        answer = json.loads(await queue.result_bytes(done) or b"")
        assert len(answer["choices"]) == 16
        depth = await queue.depth()
        assert (depth.total, depth.redeliveries) == (0, 0)
        await stores.stop()
        await queue.close()

    asyncio.run(main())


async def _status(queue: JobQueue, job_id: str, status: JobStatus) -> bool:
    job = await queue.get(job_id)
    return job is not None and job.status == status


def test_cancelling_a_running_job_stops_it_and_stores_nothing(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    async def main() -> None:
        queue = await JobQueue.connect(nats.url, QueueSettings(ack_wait_seconds=1.0))
        stores = await StoredResults().start(nats.url)
        long = chat_body(0, max_tokens=200, ignore_eos=True, n=16)
        job, _ = await queue.submit(JobKind.CHAT, "t", long)
        worker = WorkerProcess(tmp_path, nats.url, "--max-num-seqs", "1", "--idle-timeout", "2")
        try:
            await wait_until(lambda: _status(queue, job.id, JobStatus.IN_PROGRESS), 120,
                             "the job runs")  # fmt: skip
            cancelled = await queue.cancel(job.id)
            assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
            # The worker drops it at its next heartbeat and goes on with the next job.
            after, _ = await queue.submit(JobKind.CHAT, "t", chat_body(1))
            done = await queue.wait(after.id, 60)
            assert done is not None and done.status == JobStatus.COMPLETED, worker.output()
            assert await worker.wait(60) == 0, worker.output()
        finally:
            worker.kill()
        final = await queue.get(job.id)
        assert final is not None and final.status == JobStatus.CANCELLED and final.result is None
        assert stores.completed == {after.id: 1}
        assert (await queue.depth()).total == 0
        await stores.stop()
        await queue.close()

    asyncio.run(main())


def test_a_worker_resumes_after_nats_server_restarts(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    server = EmbeddedNats(store).start()

    async def main() -> None:
        nonlocal server
        queue = await JobQueue.connect(server.url)
        worker = WorkerProcess(tmp_path, server.url, "--idle-timeout", "30")
        try:
            first, _ = await queue.submit(JobKind.CHAT, "t", chat_body(0))
            done = await queue.wait(first.id, 120)
            assert done is not None and done.status == JobStatus.COMPLETED, worker.output()
            server.kill()
            await wait_until(lambda: not queue.connected, 10, "the loss seen")
            server = EmbeddedNats(store, port=server.port).start()
            await wait_until(lambda: queue.connected, 15, "reconnected")
            second, _ = await queue.submit(JobKind.CHAT, "t", chat_body(1))
            done = await queue.wait(second.id, 30)
            assert done is not None and done.status == JobStatus.COMPLETED, worker.output()
            worker.terminate()
            assert await worker.wait(60) == 0, worker.output()
        finally:
            worker.kill()
        await queue.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
