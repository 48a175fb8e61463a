"""JobQueue against a real nats-server: submit, read, wait, cancel, idempotency, bounds, faults,
and the worker-side leases without an engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ember.queue.errors import IdempotencyConflictError, QueueFullError, QueueUnavailableError
from ember.queue.job import Job, JobError, JobKind, JobStatus
from ember.queue.job_store import JobLease, JobQueue
from ember.queue.layout import QueueSettings
from ember.queue.nats_server import EmbeddedNats, free_port
from tests.queue.queue_helpers import StoredResults, chat_body, submit_many, wait_until

ANSWER = b'{"object": "chat.completion", "choices": []}'


def test_submit_get_fetch_complete_wait(nats: EmbeddedNats) -> None:
    async def main() -> None:
        queue = await JobQueue.connect(nats.url, name="w1")
        assert queue.connected
        job, new = await queue.submit(JobKind.CHAT, "tenant-a", chat_body(0))
        assert new and job.status == JobStatus.QUEUED and job.id.startswith("job_")
        assert await queue.get(job.id) == job
        assert await queue.get("job_unknown") is None
        assert await queue.get("not a key!") is None
        assert (await queue.depth()).total == 1

        lease = await queue.fetch(timeout=2)
        assert lease is not None and lease.body == chat_body(0)
        running = await queue.get(job.id)
        assert running is not None
        assert (running.status, running.attempts, running.worker) == (
            JobStatus.IN_PROGRESS,
            1,
            "w1",
        )
        assert running.started_at is not None
        # Still running at the timeout: the state as it is.
        waited = await queue.wait(job.id, timeout=0.3)
        assert waited is not None and waited.status == JobStatus.IN_PROGRESS

        async def complete_soon() -> None:
            await asyncio.sleep(0.3)
            assert await lease.complete(ANSWER)

        start = time.monotonic()
        completing = asyncio.create_task(complete_soon())
        done = await queue.wait(job.id, timeout=30)
        # Woken by the watch as the state is written, not at the timeout.
        assert time.monotonic() - start < 3
        await completing
        assert done is not None and done.status == JobStatus.COMPLETED
        assert done.finished_at is not None and await queue.result_bytes(done) == ANSWER
        # A final state is never written again.
        assert not await queue.store_result(job.id, b'{"other": 1}')
        final = await queue.get(job.id)
        assert final is not None and await queue.result_bytes(final) == ANSWER
        assert await queue.wait("job_unknown", 0.2) is None
        await wait_until(lambda: _empty(queue), 5, "depth back to 0")
        await queue.close()

    asyncio.run(main())


async def _empty(queue: JobQueue) -> bool:
    return (await queue.depth()).total == 0


def test_large_results_go_to_the_object_store(nats: EmbeddedNats) -> None:
    async def main() -> None:
        queue = await JobQueue.connect(nats.url, QueueSettings(inline_result_bytes=1000))
        job, _ = await queue.submit(JobKind.COMPLETION, "t", b"{}")
        lease = await queue.fetch(timeout=2)
        assert lease is not None
        answer = b'{"text": "' + b"x" * 100_000 + b'"}'
        assert await lease.complete(answer)
        done = await queue.get(job.id)
        assert done is not None and done.result is None and done.result_object == job.id
        assert await queue.result_bytes(done) == answer
        await queue.close()

    asyncio.run(main())


def test_cancel_queued_running_and_final(nats: EmbeddedNats) -> None:
    async def main() -> None:
        queue = await JobQueue.connect(nats.url)
        queued, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        cancelled = await queue.cancel(queued.id)
        assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
        # Its message left the stream: no worker gets it.
        assert (await queue.depth()).total == 0
        assert await queue.fetch(timeout=0.5) is None

        running, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        lease = await queue.fetch(timeout=2)
        assert lease is not None and await lease.heartbeat()
        stopped = await queue.cancel(running.id)
        assert stopped is not None and stopped.status == JobStatus.CANCELLED
        # The worker sees it at its next heartbeat, and its result is not stored.
        assert not await lease.heartbeat()
        assert not await lease.complete(ANSWER)
        after = await queue.get(running.id)
        assert after is not None and after.status == JobStatus.CANCELLED and after.result is None

        finished, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        lease = await queue.fetch(timeout=2)
        assert lease is not None
        await lease.complete(ANSWER)
        unchanged = await queue.cancel(finished.id)
        assert unchanged is not None and unchanged.status == JobStatus.COMPLETED
        assert await queue.cancel("job_unknown") is None
        await queue.close()

    asyncio.run(main())


def test_one_idempotency_key_makes_one_job_under_100_concurrent_submits(
    nats: EmbeddedNats,
) -> None:
    async def main() -> None:
        queues = [await JobQueue.connect(nats.url) for _ in range(4)]
        body = chat_body(7)
        submits = [queues[i % 4].submit(JobKind.CHAT, "t", body, "key-1") for i in range(100)]
        results: list[tuple[Job, bool]] = await asyncio.gather(*submits)
        assert len({job.id for job, _ in results}) == 1
        assert sum(new for _, new in results) == 1
        assert (await queues[0].depth()).total == 1
        # Another tenant's same key is another job; the same key with another body is a 409.
        other, new = await queues[0].submit(JobKind.CHAT, "u", body, "key-1")
        assert new and other.id != results[0][0].id
        with pytest.raises(IdempotencyConflictError, match=results[0][0].id):
            await queues[1].submit(JobKind.CHAT, "t", chat_body(8), "key-1")
        assert (await queues[0].depth()).total == 2
        for queue in queues:
            await queue.close()

    asyncio.run(main())


def test_a_full_queue_refuses_and_leaves_no_orphan_state(nats: EmbeddedNats) -> None:
    async def main() -> None:
        queue = await JobQueue.connect(nats.url, QueueSettings(max_queued_jobs=3))
        for i in range(3):
            await queue.submit(JobKind.CHAT, "t", chat_body(i))
        with pytest.raises(QueueFullError, match="3 jobs"):
            await queue.submit(JobKind.CHAT, "t", chat_body(3), "key-full")
        # The refused job's key is free again: a retry after room is made queues it.
        lease = await queue.fetch(timeout=2)
        assert lease is not None
        await lease.complete(ANSWER)
        job, new = await queue.submit(JobKind.CHAT, "t", chat_body(3), "key-full")
        assert new and (await queue.get(job.id)) is not None
        keys = await queue._states.keys()
        assert len(keys) == 4  # three submitted, one completed and resubmitted: no orphan
        await queue.close()

    asyncio.run(main())


def test_jobs_survive_kill_9_of_nats_server_and_clients_reconnect(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    server = EmbeddedNats(store).start()

    async def main() -> None:
        nonlocal server
        queue = await JobQueue.connect(server.url)
        ids = await submit_many(queue, [chat_body(i) for i in range(50)])
        server.kill()
        await wait_until(lambda: not queue.connected, 10, "the client sees the loss")
        server = EmbeddedNats(store, port=server.port).start()
        await wait_until(lambda: queue.connected, 15, "the client reconnects on its own")
        assert (await queue.depth()).pending == 50
        for job_id in ids:
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.QUEUED
        stores = await StoredResults().start(server.url)
        leases: list[JobLease] = []
        while len(leases) < 50:
            if (lease := await queue.fetch(timeout=2)) is not None:
                leases.append(lease)
        await asyncio.gather(*(lease.complete(ANSWER) for lease in leases))
        for job_id in ids:
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.COMPLETED
        await wait_until(lambda: len(stores.completed) == 50, 5, "50 results seen")
        assert set(stores.completed.values()) == {1}
        await stores.stop()
        await queue.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_an_unreachable_url_fails_quickly_naming_it() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(QueueUnavailableError, match=url):
        asyncio.run(JobQueue.connect(url, connect_timeout=2))
    assert time.monotonic() - start < 5


def test_failures_retry_then_dead_letter_after_max_deliver(nats: EmbeddedNats) -> None:
    settings = QueueSettings(max_deliver=3, retry_delay_seconds=0.1, ack_wait_seconds=1)

    async def main() -> None:
        queue = await JobQueue.connect(nats.url, settings)
        job, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        error = JobError(503, "the engine is away")
        for attempt in range(1, 4):
            lease = await _fetch_one(queue)
            assert lease.job.attempts == attempt
            await lease.retry(error)
        failed = await queue.get(job.id)
        assert failed is not None and failed.status == JobStatus.FAILED and failed.error == error
        depth = await queue.depth()
        assert (depth.total, depth.dead_letters) == (0, 1)

        # A job whose workers all die: after max_deliver deliveries without an ack, the next
        # one records the verdict instead of running it.
        lost, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        for _ in range(3):
            await _fetch_one(queue)  # and never acknowledged: the ack wait (1 s) passes
        assert await queue.fetch(timeout=3) is None
        verdict = await queue.get(lost.id)
        assert verdict is not None and verdict.status == JobStatus.FAILED
        assert verdict.error is not None and "delivered 3 times" in verdict.error.message
        depth = await queue.depth()
        assert (depth.total, depth.dead_letters) == (0, 2)

        # A permanent failure is failed at once.
        bad, _ = await queue.submit(JobKind.CHAT, "t", b"{}")
        lease = await _fetch_one(queue)
        await lease.fail(JobError(400, "bad body", "invalid_request_error"))
        permanent = await queue.get(bad.id)
        assert permanent is not None and permanent.status == JobStatus.FAILED
        assert permanent.attempts == 1
        await queue.close()

    asyncio.run(main())


async def _fetch_one(queue: JobQueue) -> JobLease:
    for _ in range(50):
        lease = await queue.fetch(timeout=1)
        if lease is not None:
            return lease
    raise AssertionError("no job delivered")


def test_a_worker_adopts_the_settings_the_queue_was_created_with(nats: EmbeddedNats) -> None:
    async def main() -> None:
        settings = QueueSettings(ack_wait_seconds=2.5, max_deliver=7, retry_delay_seconds=0.25)
        creator = await JobQueue.connect(nats.url, settings)
        worker = await JobQueue.connect(nats.url, adopt=True)
        assert worker.settings == settings
        await worker.close()
        await creator.close()

    asyncio.run(main())


def test_many_concurrent_waits_share_one_subscription(nats: EmbeddedNats) -> None:
    """1,200 long polls at once (more than the server's consumer limit, once a watch each hit
    it and every call failed) all wake when their jobs finish, and leave no consumer behind."""

    async def main() -> None:
        queue = await JobQueue.connect(nats.url, name="w1")
        jobs = [(await queue.submit(JobKind.CHAT, "t", chat_body(i)))[0] for i in range(40)]
        waits = [
            asyncio.create_task(queue.wait(jobs[i % len(jobs)].id, timeout=30)) for i in range(1200)
        ]
        await asyncio.sleep(0.2)
        leases: list[JobLease] = []
        while len(leases) < len(jobs):
            if (lease := await queue.fetch(timeout=2)) is not None:
                leases.append(lease)
        started = time.monotonic()
        for lease in leases:
            assert await lease.complete(ANSWER)
        done = await asyncio.gather(*waits)
        assert time.monotonic() - started < 10
        assert all(job is not None and job.status == JobStatus.COMPLETED for job in done)
        info = await queue._js.stream_info("KV_EMBER_JOB_STATE")
        assert info.state.consumer_count == 0
        await queue.close()

    asyncio.run(main())
