"""The server's side of the engine: admits requests, routes the worker's tokens to them.

Everything here runs on the event loop. `on_message` is the hot path: one call per engine
step, handling every running sequence's new tokens (detokenize, stop strings, metrics) with no
per-token allocation beyond the text itself.

Stream handlers are woken at most once per stream interval (all of one interval together,
by one timer), not once per step: a wake-up costs a task switch, a JSON chunk and a socket
write for the server, and a read and a parse for the client, and at GPU rates (a step every
2-6 ms) those, not the tokens, were what held one server process back. A request's interval
is its service class's (`ServiceClass.stream_interval`: the batch class's is longer, so a
flood of batch streams leaves the event loop to interactive ones) or `--stream-interval`.
Tokens up to a choice's first text (a first token may have none, e.g. a special token), a
finish and an error wake the handler at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from typing import Protocol

from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason, RequestId
from ember.engine.sequence_limits import SequenceLimits
from ember.serve.api_errors import (
    APIError,
    BadRequestError,
    DeadlineExceededError,
    QueueFullError,
    ServerOverloadedError,
    ServiceUnavailableError,
    WorkerCrashedError,
)
from ember.serve.config import ServerConfig
from ember.serve.generation import Choice, GenerationRequest
from ember.serve.metrics import ServerMetrics
from ember.serve.worker_protocol import (
    AbortRequests,
    AddRequest,
    RequestRejected,
    ServerMessage,
    StepReport,
    WorkerMessage,
    WorkerReady,
)

# Seconds a client is told to wait before retrying while no worker is ready or the queue is full.
RETRY_AFTER_NO_WORKER = 5.0
RETRY_AFTER_QUEUE_FULL = 1.0
# A shed or timed-out request of a class is told to come back after this many seconds.
RETRY_AFTER_OVERLOAD = 5.0


class WorkerLink(Protocol):
    def send(self, message: ServerMessage) -> None: ...


class EngineClient:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._choices: dict[RequestId, Choice] = {}
        self._waiting: set[RequestId] = set()
        # Sequences waiting for the engine, per service class (requests without one: "").
        self._waiting_by_class: Counter[str] = Counter()
        self._request_ids = itertools.count()
        self._worker: WorkerLink | None = None
        self.worker_info: WorkerReady | None = None
        self.draining = False
        self._engine_has_waiting = False
        # Per stream interval: streams with tokens their handler has not been woken for, the
        # pacing timer and the time of the last wake-up.
        self._unflushed: dict[float, set[GenerationRequest]] = {}
        self._flush_timers: dict[float, asyncio.TimerHandle] = {}
        self._last_flush: dict[float, float] = {}

    @property
    def ready(self) -> bool:
        return self._worker is not None and not self.draining

    @property
    def limits(self) -> SequenceLimits:
        """What fits in the worker's engine; raises the 503 while no worker is ready."""
        self._check_ready()
        assert self.worker_info is not None
        return self.worker_info.limits

    @property
    def num_in_flight(self) -> int:
        return len(self._choices)

    @property
    def num_queued(self) -> int:
        """Sequences sent to the engine that will have to wait for room there.

        Sequences the engine has not started yet but has free batch slots for are not counted
        (a burst is admitted whole if the engine can run it), unless the engine last reported
        sequences waiting anyway: then KV space, not slots, is the limit and all of them wait.
        """
        return self._beyond_free_slots(len(self._waiting))

    def _beyond_free_slots(self, waiting: int) -> int:
        if self._engine_has_waiting:
            return waiting
        running = len(self._choices) - len(self._waiting)
        free_slots = max(0, self._config.engine.max_num_seqs - running)
        return max(0, waiting - free_slots)

    def attach(self, worker: WorkerLink, info: WorkerReady) -> None:
        self._worker = worker
        self.worker_info = info
        self._metrics.on_worker_ready()

    def detach(self, how: str) -> None:
        """The worker is gone: every request it held fails, and new ones get 503 until the
        next worker is ready."""
        self._worker = None
        self.worker_info = None
        self._engine_has_waiting = False
        self._metrics.on_worker_lost()
        error = WorkerCrashedError(
            f"the engine worker {how} while running this request, which was lost; retry it",
            retry_after=RETRY_AFTER_NO_WORKER,
        )
        requests = {choice.owner for choice in self._choices.values()}
        self._metrics.finished[FinishReason.ABORT].inc(len(self._choices))
        self._choices.clear()
        self._waiting.clear()
        self._waiting_by_class.clear()
        for request in requests:
            request.live_choices = 0
            self._fail(request, error)
            request.settle()

    def _check_ready(self) -> None:
        if self._worker is None or self.draining:
            raise ServiceUnavailableError(
                "the server is shutting down" if self.draining else "no engine worker is ready",
                code="draining" if self.draining else None,
                retry_after=RETRY_AFTER_NO_WORKER,
            )

    def submit(self, request: GenerationRequest) -> None:
        """Send the request's choices (each checked against `limits`) to the worker; raises
        the API error that refuses it. Under overload, waiting requests of a sheddable class
        are shed to make room for a request of a class that is not."""
        self._check_ready()
        worker = self._worker
        assert worker is not None
        self._make_room(request)
        class_name = _class_name(request)
        for choice in request.choices:
            request_id = choice.request_id = next(self._request_ids)
            self._choices[request_id] = choice
            self._waiting.add(request_id)
            worker.send(
                AddRequest(
                    request_id,
                    choice.prompt_ids,
                    _engine_params(choice),
                    request.cache_salt,
                    request.scheduling,
                )
            )
        request.live_choices = len(request.choices)
        self._waiting_by_class[class_name] += len(request.choices)
        loop = asyncio.get_running_loop()
        timeout = request.timeout
        if timeout is not None:
            request.timer = loop.call_later(timeout, self._expire, request)
        service_class = request.service_class
        if service_class is not None:
            request.queue_timer = loop.call_later(
                service_class.queue_timeout, self._queue_expired, request
            )

    def _make_room(self, request: GenerationRequest) -> None:
        needed = len(request.choices)
        service_class = request.service_class
        if service_class is not None:
            waiting = self._beyond_free_slots(self._waiting_by_class[service_class.name])
            if waiting + needed > max(service_class.max_queued, needed):
                raise ServerOverloadedError(
                    f"{waiting} sequences of the class {service_class.name!r} are already "
                    f"waiting for the engine (its max_queued is {service_class.max_queued}); "
                    "retry later",
                    retry_after=RETRY_AFTER_QUEUE_FULL,
                )
        limit = max(self._config.max_queued_requests, needed)
        excess = self.num_queued + needed - limit
        if excess <= 0:
            return
        if service_class is not None and service_class.sheddable:
            raise ServerOverloadedError(
                f"the server is overloaded and requests of the class {service_class.name!r} "
                "are shed first; retry later",
                code="shed",
                retry_after=RETRY_AFTER_OVERLOAD,
            )
        victims = self._sheddable_for(request, excess)
        if victims is None:
            raise QueueFullError(
                f"{self.num_queued} requests are already waiting for the engine "
                f"(--max-queued-requests {self._config.max_queued_requests}); retry later",
                retry_after=RETRY_AFTER_QUEUE_FULL,
            )
        for victim in victims:
            assert victim.service_class is not None
            self.abort(victim)
            self._fail(
                victim,
                ServerOverloadedError(
                    f"the server is overloaded and this request, of the sheddable class "
                    f"{victim.service_class.name!r}, was shed for more urgent work; retry later",
                    code="shed",
                    retry_after=RETRY_AFTER_OVERLOAD,
                ),
            )

    def _sheddable_for(
        self, request: GenerationRequest, excess: int
    ) -> list[GenerationRequest] | None:
        """The newest waiting requests of sheddable, less urgent classes whose sequences make
        `excess` room; None if those are not enough."""
        priority = request.service_class.priority if request.service_class else 0
        victims: list[GenerationRequest] = []
        freed = 0
        seen: set[GenerationRequest] = set()
        for choice in reversed(self._choices.values()):
            owner = choice.owner
            service_class = owner.service_class
            if (
                owner in seen
                or owner.admitted
                or service_class is None
                or not service_class.sheddable
                or service_class.priority <= priority
            ):
                continue
            seen.add(owner)
            victims.append(owner)
            freed += owner.live_choices
            if freed >= excess:
                return victims
        return None

    def fail_all(self, error: APIError) -> None:
        """End every request in flight with `error` (and abort it in the engine)."""
        for request in {choice.owner for choice in self._choices.values()}:
            self.abort(request)
            self._fail(request, error)

    def abort(self, request: GenerationRequest) -> None:
        """Stop the request's unfinished choices in the engine (frees their KV blocks)."""
        request_ids = [c.request_id for c in request.choices if c.request_id in self._choices]
        for request_id in request_ids:
            self._forget(request_id, FinishReason.ABORT)
        if request_ids and self._worker is not None:
            self._worker.send(AbortRequests(request_ids))
        if request.timer is not None:
            request.timer.cancel()

    def on_message(self, message: WorkerMessage) -> None:
        if isinstance(message, StepReport):
            self._on_step(message)
        elif isinstance(message, RequestRejected):
            choice = self._choices.get(message.request_id)
            if choice is not None:
                self._forget(message.request_id, None)
                self.abort(choice.owner)
                self._fail(choice.owner, BadRequestError(message.message, param=message.param))

    def _on_step(self, report: StepReport) -> None:
        now = time.monotonic()
        metrics = self._metrics
        choices = self._choices
        for request_id in report.admitted:
            if request_id in self._waiting:
                self._waiting.discard(request_id)
                choice = choices.get(request_id)
                if choice is not None:
                    owner = choice.owner
                    self._waiting_by_class[_class_name(owner)] -= 1
                    queue_time = now - owner.arrival_time
                    metrics.queue_time.observe(queue_time)
                    if owner.series is not None:
                        owner.series.queue_time.observe(queue_time)
                    if not owner.admitted:
                        owner.admitted = True
                        if owner.queue_timer is not None:
                            owner.queue_timer.cancel()
                        owner.wake()
        to_abort: list[RequestId] = []
        num_tokens = 0
        unflushed = self._unflushed
        default_interval = self._config.stream_interval
        itl = metrics.itl
        for request_id, token_ids, logprobs, finish in report.deltas:
            choice = choices.get(request_id)
            if choice is None:
                continue  # aborted here while the worker was already stepping it
            num_tokens += len(token_ids)
            owner = choice.owner
            first = choice.first_token_time is None
            if first:
                choice.first_token_time = now
                ttft = now - owner.arrival_time
                metrics.ttft.observe(ttft)
                metrics.prompt_tokens.inc(len(choice.prompt_ids))
                if owner.series is not None:
                    owner.series.ttft.observe(ttft)
            elif choice.last_token_time is not None:
                itl.observe(now - choice.last_token_time)
            choice.last_token_time = now
            if choice.accept(token_ids, logprobs, finish):
                to_abort.append(request_id)
            if choice.finished:
                self._forget(request_id, choice.finish_reason)
                self._on_choice_finished(choice, now)
                owner.wake()
            elif owner.wake_on_tokens:
                if choice.awaiting_first_text:
                    owner.wake()
                else:
                    interval = owner.stream_interval
                    if interval is None:
                        interval = default_interval
                    group = unflushed.get(interval)
                    if group is None:
                        group = unflushed[interval] = set()
                    group.add(owner)
        if num_tokens:
            metrics.generation_tokens.inc(num_tokens)
        if to_abort and self._worker is not None:
            self._worker.send(AbortRequests(to_abort))
        self._engine_has_waiting = report.stats.num_waiting > 0
        metrics.on_engine_step(report.stats)
        for interval, group in unflushed.items():
            if group and interval not in self._flush_timers:
                delay = self._last_flush.get(interval, 0.0) + interval - now
                if delay > 0:
                    loop = asyncio.get_running_loop()
                    self._flush_timers[interval] = loop.call_later(delay, self._flush, interval)
                else:
                    self._flush(interval)

    def _flush(self, interval: float) -> None:
        """Wake every stream of this interval with tokens not yet taken (each writes them as one
        chunk)."""
        self._flush_timers.pop(interval, None)
        self._last_flush[interval] = time.monotonic()
        group = self._unflushed[interval]
        for request in group:
            request.wake()
        group.clear()

    def _on_choice_finished(self, choice: Choice, now: float) -> None:
        metrics = self._metrics
        e2e = now - choice.owner.arrival_time
        metrics.e2e.observe(e2e)
        if choice.owner.series is not None:
            choice.owner.series.e2e.observe(e2e)
        metrics.request_prompt_tokens.observe(len(choice.prompt_ids))
        metrics.request_generation_tokens.observe(choice.num_output_tokens)
        request = choice.owner
        if request.timer is not None and request.finished:
            request.timer.cancel()

    def _forget(self, request_id: RequestId, reason: FinishReason | None) -> None:
        choice = self._choices.pop(request_id, None)
        if choice is None:
            return
        owner = choice.owner
        if request_id in self._waiting:
            self._waiting.discard(request_id)
            self._waiting_by_class[_class_name(owner)] -= 1
        if reason is not None:
            self._metrics.finished[reason].inc()
        owner.live_choices -= 1
        if owner.live_choices == 0:
            self._settle(owner)

    def _settle(self, request: GenerationRequest) -> None:
        series = request.series
        if series is not None:
            started = [c for c in request.choices if c.first_token_time is not None]
            series.prompt_tokens.inc(sum(len(c.prompt_ids) for c in started))
            series.generation_tokens.inc(sum(c.num_output_tokens for c in request.choices))
        request.settle()

    def _queue_expired(self, request: GenerationRequest) -> None:
        if request.finished or request.admitted:
            return
        service_class = request.service_class
        assert service_class is not None
        self.abort(request)
        self._fail(
            request,
            ServerOverloadedError(
                f"the engine did not start this request within the queue timeout of its class "
                f"{service_class.name!r} ({service_class.queue_timeout:g} s); retry later",
                code="queue_timeout",
                retry_after=RETRY_AFTER_OVERLOAD,
            ),
        )

    def _expire(self, request: GenerationRequest) -> None:
        if request.finished:
            return
        self.abort(request)
        self._fail(
            request,
            DeadlineExceededError(
                f"the request did not finish within its deadline of {request.timeout:g} s"
            ),
        )

    def _fail(self, request: GenerationRequest, error: APIError) -> None:
        if request.timer is not None:
            request.timer.cancel()
        request.fail(error)


def _class_name(request: GenerationRequest) -> str:
    return "" if request.service_class is None else request.service_class.name


def _engine_params(choice: Choice) -> SamplingParams:
    """The parameters the worker needs: stop strings stay here, where the text is."""
    params = choice.params
    if not params.stop:
        return params
    return dataclasses.replace(params, stop=(), include_stop_str_in_output=False)
