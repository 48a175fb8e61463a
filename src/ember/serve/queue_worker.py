"""`ember worker`: runs queued jobs through the ordinary engine server, in this process.

The worker starts the same server stack as `ember serve` (`EmberServer`: engine worker process,
tokenizer, OpenAI routes) on a free loopback port, on a thread of its own, and forwards each job
to it as the HTTP request it is, as NVIDIA's NVCF workers forward queued requests to their
container's server. So a job is validated, tokenized, admitted and answered exactly as a
synchronous request, and the queue needs no second path into the engine.

A streamed job (`Job.streamed`: `ember gateway`'s `"stream": true`) is POSTed as a stream; its
events are published on the job's chunk subject as they come, for the gateway to relay, and
the stream's transcript is its stored result (`serve/stream_transcript.py`). Each job's tenant,
class and weight go to the local server in the `x-ember-job-tenant` header, which that server
(started with `trust_job_tenant`) schedules it by.

Delivery (the pull loop below): fetch only as many jobs as there is room for; heartbeat a
running job more often than the ack wait (and stop it if it was cancelled); store the answer,
then acknowledge. The local server's 4xx is permanent (the job fails with that error, never
retried); a 5xx or a lost connection is retryable (nak with the retry delay, until
max_deliver). After `idle_timeout` seconds without a job the worker exits 0; on SIGTERM it
stops fetching, lets running jobs finish for the server's shutdown grace period, hands the
rest back (nak) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

import aiohttp

from ember.errors import EmberError
from ember.queue.job import JobError, JobKind
from ember.queue.job_store import JobLease, JobQueue
from ember.serve.config import ServerConfig
from ember.serve.connection_bounds import connections_within, raise_descriptor_limit
from ember.serve.engine_spawn import SpawnedEngine
from ember.serve.job_tenant import JOB_TENANT_HEADER
from ember.serve.log_format import configure_logging
from ember.serve.server import EmberServer
from ember.serve.stream_transcript import StreamTranscript, split_events

logger = logging.getLogger("ember.worker")

_PATHS = {JobKind.CHAT: "/v1/chat/completions", JobKind.COMPLETION: "/v1/completions"}
# 4xx answers that say "not now" rather than "never": retried like a 5xx.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})
_READY_POLL_SECONDS = 0.02  # a cold worker's first job waits for it


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    nats_url: str
    server: ServerConfig  # the local engine server (loopback, free port: `port` 0)
    max_concurrent_jobs: int = 64
    idle_timeout: float | None = None  # seconds without a job before exiting; None: never
    name: str | None = None  # recorded in each job it runs; None: host and pid
    fetch_timeout: float = 1.0  # one fetch's wait: how soon a stop or an idle timeout is seen
    startup_timeout: float = 600.0  # for the model to load
    # This process's CUDA_VISIBLE_DEVICES, for the log (`ember worker --gpus` sets it per child).
    visible_devices: str | None = None

    def __post_init__(self) -> None:
        if self.max_concurrent_jobs < 1:
            raise EmberError("--max-concurrent-jobs must be >= 1")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise EmberError("--idle-timeout must be positive")

    @property
    def worker_name(self) -> str:
        return self.name or f"ember-worker-{socket.gethostname()}-{os.getpid()}"


def run_worker(config: WorkerConfig, prestarted: SpawnedEngine | None = None) -> int:
    """`prestarted`: the local server's engine process, started before this module was
    imported (`ember worker` does: a cold worker's first job waits for both)."""
    configure_logging(config.server.log_level)
    try:
        return asyncio.run(_run(config, prestarted))
    finally:
        if prestarted is not None:  # a no-op once the server has taken it
            prestarted.discard()


async def _run(config: WorkerConfig, prestarted: SpawnedEngine | None) -> int:
    # The queue first: a wrong URL is an error in seconds (the model loads meanwhile, if its
    # process was started early).
    queue = await JobQueue.connect(config.nats_url, name=config.worker_name, adopt=True)
    local = LocalServer(config.server, prestarted)
    try:
        base_url = local.start()
        await local.wait_ready(base_url, config.startup_timeout)
        connector = aiohttp.TCPConnector(limit=config.max_concurrent_jobs)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:
            worker = QueueWorker(config, queue, http)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop, sig.name)
            await worker.run()
    finally:
        await queue.close()
        local.stop()
    return 0


class QueueWorker:
    """The pull loop: jobs from `queue`, each POSTed to the local server through `http`."""

    def __init__(self, config: WorkerConfig, queue: JobQueue, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.queue = queue
        self.http = http
        self.heartbeat_seconds = queue.settings.ack_wait_seconds / 3
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False

    def stop(self, reason: str = "stop") -> None:
        if not self._stopping:
            logger.info("%s: no more jobs are fetched; %d running", reason, len(self._running))
        self._stopping = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        logger.info("worker %s (pid %d, CUDA_VISIBLE_DEVICES=%s) takes jobs from %s (up to %d "
                    "at once)", self.queue.name, os.getpid(), self.config.visible_devices,
                    self.queue.url, self.config.max_concurrent_jobs)  # fmt: skip
        while not self._stopping:
            if len(self._running) == self.config.max_concurrent_jobs:
                await asyncio.wait(self._running, timeout=self.config.fetch_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                continue
            try:
                lease = await self.queue.fetch(timeout=self.config.fetch_timeout)
            except EmberError:
                raise
            except Exception as error:  # the connection is down: nats-py reconnects
                logger.warning("fetching jobs failed (%r); retrying", error)
                await asyncio.sleep(self.config.fetch_timeout)
                continue
            if lease is not None:
                task = asyncio.create_task(self._run_job(lease))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._running:
                idle_since = loop.time()
            elif (
                self.config.idle_timeout is not None
                and loop.time() - idle_since >= self.config.idle_timeout
            ):
                logger.info("no job for %.0f s: exiting", self.config.idle_timeout)
                break
        await self._finish_running()

    async def _finish_running(self) -> None:
        if not self._running:
            return
        grace = self.config.server.shutdown_grace_period
        _, unfinished = await asyncio.wait(self._running, timeout=grace)
        for task in unfinished:
            task.cancel()  # each hands its job back (nak)
        if unfinished:
            logger.warning("handing back %d unfinished jobs", len(unfinished))
            await asyncio.wait(unfinished)

    async def _run_job(self, lease: JobLease) -> None:
        try:
            await self._attempt(lease)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await lease.release()
            raise
        except Exception:
            # NATS lost mid-way: the job is delivered again after the ack wait.
            logger.exception("job %s: could not record its outcome", lease.job.id)

    async def _attempt(self, lease: JobLease) -> None:
        job = lease.job
        try:
            body = streaming_body(lease.body) if job.streamed else non_streaming_body(lease.body)
        except ValueError as error:
            await lease.fail(JobError(400, str(error), "invalid_request_error"))
            return
        headers = {"content-type": "application/json"}
        if job.scheduling is not None:
            headers[JOB_TENANT_HEADER] = job.scheduling
        path = _PATHS[job.kind]
        if job.streamed:
            transcript = StreamTranscript(client_usage=asks_for_usage(lease.body))
            run = self._post_streamed(lease, path, body, headers, transcript)
        else:
            run = self._post(path, body, headers)
        post = asyncio.create_task(run)
        try:
            while not (await asyncio.wait({post}, timeout=self.heartbeat_seconds))[0]:
                if not await lease.heartbeat():
                    logger.info("job %s was cancelled or finished elsewhere", lease.job.id)
                    await lease.drop()
                    return
        finally:
            post.cancel()  # a no-op once done; else the connection closes, aborting it
        try:
            status, answer = post.result()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            await lease.retry(JobError(503, f"the local engine server failed: {error!r}"))
            return
        if status == 200:
            await lease.complete(answer)
        elif 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
            await lease.fail(job_error(status, answer))
        else:
            await lease.retry(job_error(status, answer))

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.http.post(path, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def _post_streamed(
        self,
        lease: JobLease,
        path: str,
        body: bytes,
        headers: dict[str, str],
        transcript: StreamTranscript,
    ) -> tuple[int, bytes]:
        """Reads the engine server's stream, publishing each read's whole events as they come
        (one message per read: at most one per --stream-interval per stream); the answer is
        the stream's transcript, stored as the job's result."""
        job = lease.job
        async with self.http.post(path, data=body, headers=headers) as response:
            if response.status != 200 or response.content_type != "text/event-stream":
                return response.status, await response.read()
            rest = b""
            async for data in response.content.iter_any():
                events, rest = split_events(rest + data)
                out = [e for e in map(transcript.add, events) if e is not None]
                if out:
                    first = len(transcript.payloads) - len(out)
                    await self.queue.publish_chunk(job.id, job.attempts, first, b"".join(out))
        if not transcript.done:
            message = "the engine server's stream ended before [DONE]"
            return 502, json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
        return 200, transcript.encode()


def _body_fields(body: bytes) -> dict[str, object]:
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the job's body is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError("the job's body must be a JSON object")
    return fields


def non_streaming_body(body: bytes) -> bytes:
    """The job's body with `stream` off: a job's answer is one JSON object."""
    fields = _body_fields(body)
    fields["stream"] = False
    fields.pop("stream_options", None)
    return json.dumps(fields).encode()


def streaming_body(body: bytes) -> bytes:
    """A streamed job's body: a stream, with its usage chunk (the tenant is charged the
    tokens it used; `StreamTranscript` takes the chunk out again for a client that did not
    ask for it)."""
    fields = _body_fields(body)
    fields["stream"] = True
    options = fields.get("stream_options")
    fields["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                "include_usage": True}  # fmt: skip
    return json.dumps(fields).encode()


def asks_for_usage(body: bytes) -> bool:
    """Whether the client's own body asked for a stream's usage chunk."""
    options = _body_fields(body).get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def job_error(status: int, answer: bytes) -> JobError:
    """The local server's error answer (OpenAI's shape) as the job's error."""
    try:
        error = json.loads(answer)["error"]
        return JobError(
            status=status,
            message=str(error.get("message", "")),
            type=str(error.get("type") or "server_error"),
            param=error.get("param"),
            code=None if error.get("code") is None else str(error["code"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        text = answer[:500].decode(errors="replace")
        return JobError(status=status, message=f"HTTP {status} from the engine server: {text}")


class LocalServer:
    """`EmberServer` on a loopback socket, its event loop on a thread of its own (so that the
    signals stay the worker's, and its tokenizing never delays a heartbeat)."""

    def __init__(self, config: ServerConfig, prestarted: SpawnedEngine | None = None) -> None:
        self.config = config
        self._prestarted = prestarted
        self.error: BaseException | None = None
        self._socket = socket.socket()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ember-local-server", daemon=True)

    def start(self) -> str:
        self._socket.bind((self.config.host, self.config.port))
        host, port = self._socket.getsockname()[:2]
        self._thread.start()
        return f"http://{host}:{port}"

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            max_connections = connections_within(
                self.config.max_connections, raise_descriptor_limit()
            )
            server = EmberServer(self.config, max_connections, self._prestarted)
            self._task = loop.create_task(server.serve(self._socket))
            self._loop = loop
            if self._stopped.is_set():
                self._task.cancel()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as error:
            self.error = error
        finally:
            loop.close()

    async def wait_ready(self, base_url: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession(base_url) as http:
            while loop.time() < deadline:
                if not self._thread.is_alive():
                    if isinstance(self.error, EmberError):
                        raise self.error
                    raise EmberError(f"the worker's engine server failed to start: {self.error!r}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get("/ready") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(_READY_POLL_SECONDS)
        raise EmberError(f"the worker's engine server was not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the server and its engine worker process."""
        self._stopped.set()
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout)
