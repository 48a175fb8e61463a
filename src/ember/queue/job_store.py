"""`JobQueue`: what gateways and workers share over NATS JetStream.

A job is two things: its state (`Job`, JSON) in the key-value bucket, and, while it waits or
runs, one message holding its body in the work-queue stream. Every change of state is a
compare-and-set on the key's revision, and no change is made to a final state, so a job gets
exactly one stored result however often it is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import msgspec

from ember.queue.errors import (
    IdempotencyConflictError,
    JobTooLargeError,
    QueueDependencyError,
    QueueFullError,
    QueueUnavailableError,
)
from ember.queue.job import Job, JobError, JobKind, JobStatus, decode_job, encode_job, new_job_id
from ember.queue.job_chunks import ChunkFeed, publish_chunk
from ember.queue.layout import (
    CONSUMER,
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    IDEMPOTENCY_BUCKET,
    RESULTS_STORE,
    SETTINGS_METADATA_KEY,
    STATE_BUCKET,
    STREAM,
    SUBJECT_PREFIX,
    QueueSettings,
    dead_letter_subject,
    job_id_of,
    job_subject,
)

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext, api
    from nats.js.kv import KeyValue
    from nats.js.object_store import ObjectStore
except ImportError as missing:
    raise QueueDependencyError(
        f'the job queue needs nats-py ({missing}): pip install "ember-llm[queue]"'
    ) from missing

logger = logging.getLogger("ember.queue")

_VALID_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_STREAM_FULL = 10077  # JSStreamStoreFailedF: "maximum messages exceeded" under discard new
_STREAM_EXISTS = 10058  # a stream or bucket of that name exists with another configuration
_API_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class QueueDepth:
    pending: int  # queued, never delivered
    unacknowledged: int  # delivered and not yet acknowledged: running, or awaiting redelivery
    oldest_age_seconds: float  # of the oldest job still in the stream (0 when empty)
    redeliveries: int  # unacknowledged jobs delivered more than once
    dead_letters: int  # jobs failed after max_deliver deliveries, kept for the TTL

    @property
    def total(self) -> int:
        """pending + unacknowledged: the figure KEDA's NATS JetStream scaler reads."""
        return self.pending + self.unacknowledged


@dataclass(frozen=True, slots=True)
class StoredJob:
    job: Job
    revision: int
    changed: bool = False  # whether this call wrote it


def idempotency_entry(tenant: str, key: str) -> str:
    """The bucket key of a tenant's idempotency key (any text: hashed to valid key characters)."""
    return hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()


class JobQueue:
    """One connection to the queue; safe to share between the tasks of one event loop."""

    def __init__(
        self,
        url: str,
        name: str,
        settings: QueueSettings,
        client: Client,
        jetstream: JetStreamContext,
        states: KeyValue,
        keys: KeyValue,
        results: ObjectStore,
    ) -> None:
        self.url = url
        self.name = name
        self.settings = settings
        self._client = client
        self._js = jetstream
        self._states = states
        self._keys = keys
        self._results = results
        self._pull: JetStreamContext.PullSubscription | None = None
        # `wait`'s: the bucket's update subscription, and the waiters per job id.
        self._finals: Subscription | None = None
        self._final_waiters: dict[str, set[asyncio.Future[Job | None]]] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        settings: QueueSettings = QueueSettings(),  # noqa: B008 (frozen)
        name: str = "ember",
        *,
        adopt: bool = False,
        connect_timeout: float = 5.0,
    ) -> JobQueue:
        """Connects and creates or updates the stream, consumer, buckets and object store.

        `adopt`: a queue that exists keeps the settings it was created with (a worker's way:
        the gateway, or whoever created the queue, owns them); `self.settings` are those.
        """
        client = await _connect(url, name, connect_timeout)
        try:
            js = client.jetstream(timeout=_API_TIMEOUT)
            settings = await _ensure_stream(js, settings, adopt)
            ttl = settings.job_ttl_seconds
            states = await _key_value(js, api.KeyValueConfig(bucket=STATE_BUCKET, ttl=ttl))
            keys = await _key_value(js, api.KeyValueConfig(bucket=IDEMPOTENCY_BUCKET, ttl=ttl))
            results = await js.create_object_store(
                RESULTS_STORE, api.ObjectStoreConfig(ttl=ttl, storage=api.StorageType.FILE)
            )
            await js.add_stream(
                api.StreamConfig(
                    name=DEAD_LETTER_STREAM,
                    subjects=[f"{DEAD_LETTER_PREFIX}.>"],
                    storage=api.StorageType.FILE,
                    max_age=ttl,
                    duplicate_window=min(ttl, settings.duplicate_window_seconds),
                )
            )
        except (nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError,
                nats.errors.NoRespondersError) as error:  # fmt: skip
            await client.close()
            raise QueueUnavailableError(url, f"JetStream is not enabled there ({error})") from None
        except (TimeoutError, nats.errors.Error) as error:
            await client.close()
            raise QueueUnavailableError(url, f"setting up the queue failed: {error!r}") from None
        return cls(url, name, settings, client, js, states, keys, results)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected)

    async def close(self) -> None:
        """Flushes what is sent (acknowledgements included), then closes."""
        if self._finals is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._finals.unsubscribe()
            self._finals = None
        if self._pull is not None:
            # A fetch's leftover status messages sit in its queue, which nothing reads: drain
            # would wait for them until the timeout, then log a cancelled gather.
            with contextlib.suppress(nats.errors.Error):
                await self._pull.unsubscribe()
            self._pull = None
        try:
            await asyncio.wait_for(self._client.drain(), _API_TIMEOUT)
        except (TimeoutError, nats.errors.Error):
            await self._client.close()

    # -- gateway side -------------------------------------------------------------------------

    async def submit(
        self,
        kind: JobKind,
        tenant: str,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        job_id: str | None = None,
        streamed: bool = False,
        scheduling: str | None = None,
    ) -> tuple[Job, bool]:
        """Stores the job's state, then queues its body. Returns the job and whether it is new
        (False: the tenant's idempotency key named a job with the same body already).

        `job_id`: one from `new_job_id`, for a submitter that opens the job's `chunk_feed`
        before the job can run; `streamed` and `scheduling`: see `Job`."""
        digest = hashlib.sha256(body).hexdigest()
        job = Job(id=job_id or new_job_id(), kind=kind, tenant=tenant,
                  idempotency_key=idempotency_key, body_digest=digest, streamed=streamed,
                  scheduling=scheduling)  # fmt: skip
        try:
            await self._states.create(job.id, encode_job(job))
            if idempotency_key is not None:
                entry = idempotency_entry(tenant, idempotency_key)
                existing = await self._claim_key(entry, job)
                if existing is not None:
                    await self._states.purge(job.id)
                    if existing.body_digest != digest:
                        raise IdempotencyConflictError(existing.id)
                    return existing, False
            try:
                await self._publish(job, body)
            except BaseException:
                await self._forget(job)
                raise
        except (TimeoutError, nats.js.errors.APIError, nats.errors.Error) as error:
            raise QueueUnavailableError(self.url, f"submitting failed: {error!r}") from None
        return job, True

    async def _claim_key(self, entry: str, job: Job) -> Job | None:
        """Binds the idempotency key to `job` (atomic create), or returns the job it names."""
        while True:
            try:
                await self._keys.create(entry, job.id.encode())
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                found = await self._keys.get(entry)
            except nats.js.errors.KeyNotFoundError:
                continue  # removed meanwhile: try to create it again
            assert found.value is not None
            existing = await self.get(found.value.decode())
            if existing is not None:
                return existing
            # Its job failed to queue (or expired): take the key over, unless another does.
            try:
                await self._keys.update(entry, job.id.encode(), last=found.revision)
                return None
            except nats.js.errors.KeyWrongLastSequenceError:
                continue

    async def _publish(self, job: Job, body: bytes) -> None:
        # The message id is the job id: a publish retried after a lost acknowledgement is
        # dropped by JetStream's deduplication instead of queuing the job twice.
        headers = {"Nats-Msg-Id": job.id}
        for attempt in range(2):
            try:
                await self._js.publish(job_subject(job.id), body, headers=headers, stream=STREAM)
                return
            except nats.errors.MaxPayloadError:
                raise JobTooLargeError(len(body), self._client.max_payload) from None
            except nats.js.errors.APIError as error:
                if error.err_code == _STREAM_FULL or "maximum messages" in str(error):
                    raise QueueFullError(self.settings.max_queued_jobs) from None
                raise
            except nats.errors.TimeoutError:
                if attempt == 1:
                    raise

    async def _forget(self, job: Job) -> None:
        """Removes a job that could not be queued (its state, its idempotency key)."""
        try:
            await self._states.purge(job.id)
            if job.idempotency_key is not None:
                await self._keys.purge(idempotency_entry(job.tenant, job.idempotency_key))
        except (TimeoutError, nats.errors.Error):
            logger.warning("could not remove the state of job %s, which was not queued", job.id)

    async def get(self, job_id: str) -> Job | None:
        stored = await self._read(job_id)
        return None if stored is None else stored.job

    async def wait(self, job_id: str, timeout: float) -> Job | None:
        """The job as soon as its status is final, or as it is at the timeout; None if there is
        no such job. Woken by the one subscription this queue keeps to the state bucket's
        updates (`_watch_finals`), not by a watch per call: a key-value watch is a consumer on
        the server, and a thousand waiting clients would be a thousand consumers (the server's
        limit, after which every call fails)."""
        if _VALID_KEY.fullmatch(job_id) is None:
            return None
        await self._watch_finals()
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        waiting = self._final_waiters.setdefault(job_id, set())
        waiting.add(future)  # before reading, so an update between the two is not missed
        try:
            stored = await self._read(job_id)
            if stored is None or stored.job.status.final:
                return None if stored is None else stored.job
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                current = await self._read(job_id)
                return None if current is None else current.job
        finally:
            waiting.discard(future)
            if not waiting:
                self._final_waiters.pop(job_id, None)

    async def when_final(
        self, job_id: str, callback: Callable[[Job | None], None]
    ) -> asyncio.Future[Job | None]:
        """`callback(job)` once the job's status turns final (None: the job was deleted), from
        the one update subscription `wait` uses. Register it before the job can finish (before
        its submit, with the id given to `submit`); an update missed while NATS reconnects
        never calls it. Cancelling the returned future unregisters it."""
        await self._watch_finals()
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        waiting = self._final_waiters.setdefault(job_id, set())
        waiting.add(future)

        def done(finished: asyncio.Future[Job | None]) -> None:
            remaining = self._final_waiters.get(job_id)
            if remaining is not None:
                remaining.discard(finished)
                if not remaining:
                    del self._final_waiters[job_id]
            if not finished.cancelled():
                callback(finished.result())

        future.add_done_callback(done)
        return future

    async def chunk_feed(self, job_id: str) -> ChunkFeed:
        """The chunks the worker running a streamed job publishes, from now on."""
        return await ChunkFeed(job_id).open(self._client)

    async def publish_chunk(self, job_id: str, attempt: int, first: int, data: bytes) -> bool:
        return await publish_chunk(self._client, job_id, attempt, first, data)

    async def _watch_finals(self) -> None:
        """Subscribes (once) to every update of the state bucket: a job's waiters are woken
        when it turns final or is deleted. Core NATS, no consumer; resubscribed by the client
        on reconnect (an update missed meanwhile is read at the waiter's timeout)."""
        if self._finals is not None:
            return
        prefix = f"$KV.{STATE_BUCKET}."

        async def on_update(message: Msg) -> None:
            waiters = self._final_waiters.get(message.subject[len(prefix) :])
            if not waiters:
                return
            operation = (message.headers or {}).get("KV-Operation")
            job: Job | None = None
            if operation not in ("DEL", "PURGE") and message.data:
                job = decode_job(message.data)
                if not job.status.final:
                    return
            for future in waiters:
                if not future.done():
                    future.set_result(job)

        self._finals = await self._client.subscribe(prefix + ">", cb=on_update)

    async def cancel(self, job_id: str) -> Job | None:
        """A queued or running job becomes cancelled (a worker running it stops at its next
        heartbeat); a final one is returned unchanged; None if there is no such job."""

        def cancelled(job: Job) -> Job | None:
            if job.status.final:
                return None
            return msgspec.structs.replace(job, status=JobStatus.CANCELLED,
                                           finished_at=time.time())  # fmt: skip

        stored = await self._change(job_id, cancelled)
        if stored is None:
            return None
        if stored.changed:
            # Its message leaves the stream now; a worker that fetched it already sees the
            # final state and acknowledges it without running it.
            await self._js.purge_stream(STREAM, subject=job_subject(job_id))
        return stored.job

    async def result_bytes(self, job: Job) -> bytes | None:
        """The answer's JSON, inline in the state or from the object store."""
        if job.result is not None:
            return bytes(job.result)
        if job.result_object is None:
            return None
        try:
            found = await self._results.get(job.result_object)
        except nats.js.errors.NotFoundError:
            return None
        return found.data

    async def depth(self) -> QueueDepth:
        consumer = await self._js.consumer_info(STREAM, CONSUMER)
        stream = await self._js.stream_info(STREAM)
        dead = await self._js.stream_info(DEAD_LETTER_STREAM)
        age = 0.0
        if stream.state.messages:
            try:
                first = await self._js.get_msg(STREAM, seq=stream.state.first_seq)
                if first.time is not None:
                    age = max(0.0, time.time() - first.time.timestamp())
            except nats.js.errors.NotFoundError:
                pass  # acknowledged meanwhile
        return QueueDepth(
            pending=consumer.num_pending or 0,
            unacknowledged=consumer.num_ack_pending or 0,
            oldest_age_seconds=age,
            redeliveries=consumer.num_redelivered or 0,
            dead_letters=dead.state.messages,
        )

    # -- worker side --------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> JobLease | None:
        """The next job, marked in_progress by this worker; None after `timeout` (or when it
        was cancelled or finished meanwhile: acknowledged and left out). One job a call: a
        worker calls again for each free slot, at once, and a job that comes after an idle
        spell starts without waiting for others (nats-py's fetch of n > 1 waits out its whole
        expiry, 50 ms here, whenever fewer than n are there: on a cold worker's first job)."""
        if self._pull is None:
            self._pull = await self._js.pull_subscribe_bind(CONSUMER, STREAM)
        try:
            [message] = await self._pull.fetch(1, timeout=timeout)
        except TimeoutError:  # nats-py's, or asyncio's from inside its fetch: no job came
            return None
        return await self._claim(message)

    async def _claim(self, message: Msg) -> JobLease | None:
        job_id = job_id_of(message.subject)
        delivered = message.metadata.num_delivered or 1
        if delivered > self.settings.max_deliver:
            # The previous deliveries all ended without an acknowledgement (their workers
            # died): this extra one, the consumer's last, only records the verdict.
            error = JobError(500, f"the job was delivered {self.settings.max_deliver} times and "
                             "never finished: the worker running it stopped each time")  # fmt: skip
            await self.dead_letter(message, error)
            return None
        now = time.time()

        def started(job: Job) -> Job | None:
            if job.status.final:
                return None
            return msgspec.structs.replace(job, status=JobStatus.IN_PROGRESS,
                                           attempts=job.attempts + 1, started_at=now,
                                           worker=self.name)  # fmt: skip

        stored = await self._change(job_id, started)
        if stored is None or not stored.changed:
            await message.ack()  # expired, cancelled or finished: nothing to run
            return None
        return JobLease(self, message, stored.job)

    async def store_final(self, job_id: str, change: Callable[[Job], Job]) -> bool:
        """Writes `change(job)` unless the job is final already; whether it was written."""
        stored = await self._change(job_id, lambda job: None if job.status.final else change(job))
        return stored is not None and stored.changed

    async def store_result(self, job_id: str, answer: bytes) -> bool:
        """The job completed with `answer` (JSON), unless it is final already."""
        name = None
        if len(answer) > self.settings.inline_result_bytes:
            name = job_id
            await self._results.put(name, answer)
        finished = time.time()
        stored = await self.store_final(
            job_id,
            lambda job: msgspec.structs.replace(
                job,
                status=JobStatus.COMPLETED,
                finished_at=finished,
                result=None if name else msgspec.Raw(answer),
                result_object=name,
                error=None,
            ),
        )
        if not stored and name is not None:
            await self._results.delete(name)
        return stored

    async def dead_letter(self, message: Msg, error: JobError) -> None:
        """Fails the job, records it as a dead letter and ends its deliveries."""
        job_id = job_id_of(message.subject)
        await self.store_failure(job_id, error)
        await self._js.publish(dead_letter_subject(job_id), encode_job(error),
                               headers={"Nats-Msg-Id": job_id})  # fmt: skip
        await message.term()

    async def store_failure(self, job_id: str, error: JobError) -> bool:
        finished = time.time()
        return await self.store_final(
            job_id,
            lambda job: msgspec.structs.replace(job, status=JobStatus.FAILED,
                                                finished_at=finished, error=error),
        )  # fmt: skip

    async def requeue(self, job_id: str, error: JobError | None) -> None:
        """Back to queued (a retry or a worker's shutdown), keeping the last error to show."""
        await self.store_final(
            job_id,
            lambda job: msgspec.structs.replace(job, status=JobStatus.QUEUED, error=error),
        )

    async def _read(self, job_id: str) -> StoredJob | None:
        if _VALID_KEY.fullmatch(job_id) is None:
            return None
        try:
            entry = await self._states.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value or entry.revision is None:
            return None
        return StoredJob(decode_job(entry.value), entry.revision)

    async def _change(self, job_id: str, change: Callable[[Job], Job | None]) -> StoredJob | None:
        """Compare-and-set: `change` sees the current state and returns the next (None: leave
        it); retried on a concurrent write. None when there is no such job."""
        while True:
            stored = await self._read(job_id)
            if stored is None:
                return None
            changed = change(stored.job)
            if changed is None:
                return stored
            try:
                revision = await self._states.update(
                    job_id, encode_job(changed), last=stored.revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return StoredJob(changed, revision, changed=True)


class JobLease:
    """A job this worker holds: its unacknowledged message and the state it marked running.

    Each ending acknowledges the message only after the state is stored.
    """

    def __init__(self, queue: JobQueue, message: Msg, job: Job) -> None:
        self.queue = queue
        self.message = message
        self.job = job

    @property
    def body(self) -> bytes:
        return bytes(self.message.data)

    @property
    def deliveries(self) -> int:
        return self.message.metadata.num_delivered or 1

    async def heartbeat(self) -> bool:
        """Extends the ack wait; False when the job is no longer this worker's to run
        (cancelled, or finished by another delivery)."""
        try:
            await self.message.in_progress()
            current = await self.queue.get(self.job.id)
        except (TimeoutError, nats.errors.Error):
            return True  # NATS is away for now: keep running, store when it is back
        return current is not None and not current.status.final

    async def complete(self, answer: bytes) -> bool:
        stored = await self.queue.store_result(self.job.id, answer)
        await self.message.ack()
        return stored

    async def fail(self, error: JobError) -> None:
        """A permanent failure: the job is failed now and never delivered again."""
        await self.queue.store_failure(self.job.id, error)
        await self.message.ack()

    async def retry(self, error: JobError) -> None:
        """A retryable failure: delivered again after the retry delay, until max_deliver."""
        if self.deliveries >= self.queue.settings.max_deliver:
            await self.queue.dead_letter(self.message, error)
            return
        await self.queue.requeue(self.job.id, error)
        await self.message.nak(delay=self.queue.settings.retry_delay_seconds)

    async def release(self) -> None:
        """Hands the job back at once (the worker is stopping)."""
        await self.queue.requeue(self.job.id, self.job.error)
        await self.message.nak()

    async def drop(self) -> None:
        """Acknowledges a job that is no longer to run (cancelled or finished elsewhere)."""
        await self.message.ack()


async def _connect(url: str, name: str, timeout: float) -> Client:
    client = Client()

    async def on_error(error: Exception) -> None:
        logger.debug("NATS %s: %r", url, error)

    async def on_disconnect() -> None:
        if client.is_closed:
            return
        logger.warning("lost the connection to NATS at %s; reconnecting", url)

    async def on_reconnect() -> None:
        logger.info("reconnected to NATS at %s", url)

    try:
        # Once connected the client reconnects for ever on its own; only the first connection
        # is bounded, so that a wrong URL is an error at start rather than a hang.
        await asyncio.wait_for(
            client.connect(
                servers=[url],
                name=name,
                connect_timeout=max(1, int(timeout / 2)),
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as error:
        with contextlib.suppress(TimeoutError, OSError, nats.errors.Error):
            await asyncio.wait_for(client.close(), 1.0)
        reason = (
            f"no connection within {timeout:.0f} s"
            if isinstance(error, asyncio.TimeoutError)
            else repr(error)
        )
        raise QueueUnavailableError(url, reason) from None
    return client


async def _ensure_stream(
    js: JetStreamContext, settings: QueueSettings, adopt: bool
) -> QueueSettings:
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None and adopt:
        found = (info.config.metadata or {}).get(SETTINGS_METADATA_KEY)
        if found is not None:
            settings = msgspec.json.decode(found.encode(), type=QueueSettings)
    config = api.StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_msgs=settings.max_queued_jobs,
        max_age=settings.job_ttl_seconds,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=settings.duplicate_window_seconds,
        metadata={SETTINGS_METADATA_KEY: msgspec.json.encode(asdict(settings)).decode()},
    )
    if info is None:
        await js.add_stream(config)
    elif not adopt:
        await js.update_stream(config)
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_seconds,
            # One delivery past max_deliver: it records the verdict on a job whose workers
            # all died (JobQueue._claim), so that no job stays in the stream undelivered.
            max_deliver=settings.max_deliver + 1,
            max_ack_pending=-1,
        ),
    )
    return settings


async def _key_value(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except nats.js.errors.APIError as error:
        if error.err_code != _STREAM_EXISTS:
            raise
        return await js.key_value(config.bucket)
