"""A request in flight, as the HTTP server sees it: its choices, their text so far, its fate.

Token ids arrive from the engine worker once per step; each `Choice` turns them into text
(incremental detokenization and stop strings, via the engine's `TextStream`) and keeps what
the HTTP side has not yet taken. The handler takes everything new whenever it wakes, so however
many steps passed since it last ran, it writes one chunk: per-token work is only the
detokenizing, and per-chunk work (JSON, the socket write) is paid per wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduling import Scheduling
from ember.engine.sequence import FinishReason, RequestId, TokenLogprob
from ember.engine.stop_checker import StopChecker
from ember.engine.text_stream import TextStream
from ember.model.tokenizer import Tokenizer
from ember.serve.api_errors import APIError
from ember.serve.background_lane import BackgroundLane
from ember.serve.metrics import TenantSeries
from ember.serve.service_classes import ServiceClass


@dataclass(slots=True)
class ChoiceDelta:
    """What a choice produced since the last `take`."""

    text: str
    logprobs: list[TokenLogprob]
    num_tokens: int
    finish_reason: FinishReason | None


@dataclass(slots=True, eq=False)
class Choice:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    stop: StopChecker
    text: TextStream
    owner: GenerationRequest
    request_id: RequestId = -1  # the engine's id for this choice, given at submission
    finish_reason: FinishReason | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    _pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    _pending_tokens: int = 0
    _taken_finish: bool = False
    _text_taken: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def num_output_tokens(self) -> int:
        return self.stop.num_tokens

    @property
    def awaiting_first_text(self) -> bool:
        """No `take` has returned text yet (a first token may have none: a special token, part
        of a character), so the first text must not wait for the stream interval."""
        return not self._text_taken

    def accept(
        self,
        token_ids: list[int],
        logprobs: list[TokenLogprob] | None,
        engine_finish: FinishReason | None,
    ) -> bool:
        """Add the engine's new tokens, checked for a stop as the engine checks them, plus the
        stop strings the engine does not see; True when the choice ended here while the engine
        would go on (so the caller must abort it there)."""
        if self.finish_reason is not None:
            return False
        stop = self.stop
        reason: FinishReason | None = None
        count = 0
        for token_id in token_ids:
            count += 1
            reason = stop.accept(token_id)
            if reason is not None:
                break
        self._pending_tokens += count
        if logprobs:
            self._pending_logprobs.extend(logprobs[:count])
        if reason is None and engine_finish is not None:  # not expected: both check alike
            reason = FinishReason.STOP if self.text.finish() else engine_finish
        self.finish_reason = reason
        return reason is not None and engine_finish is None

    def take(self) -> ChoiceDelta | None:
        """New text, logprobs and (once) the finish reason; None when nothing is new."""
        finished = self.finish_reason is not None
        if not self._pending_tokens and (not finished or self._taken_finish):
            return None
        delta = ChoiceDelta(
            self.text.take_delta(final=finished),
            self._pending_logprobs,
            self._pending_tokens,
            self.finish_reason if finished else None,
        )
        self._pending_logprobs = []
        self._pending_tokens = 0
        self._taken_finish = finished
        self._text_taken = self._text_taken or bool(delta.text)
        return delta


class GenerationRequest:
    """One HTTP request's sequences, and the event its handler waits on."""

    def __init__(
        self, response_id: str, timeout: float | None, cache_salt: str | None = None
    ) -> None:
        self.response_id = response_id  # the id its response carries ("chatcmpl-…")
        self.cache_salt = cache_salt  # its sequences share cached prefixes only within it
        self.arrival_time = time.monotonic()
        self.timeout = timeout  # seconds from submission to the last token
        self.choices: list[Choice] = []
        self.error: APIError | None = None
        self.timer: asyncio.TimerHandle | None = None
        # Who asked, and how the engine orders it (None: an open server's defaults).
        self.scheduling: Scheduling | None = None
        self.service_class: ServiceClass | None = None
        self.series: TenantSeries | None = None
        # Seconds between a stream's chunks at most (its class's); None: the server's.
        self.stream_interval: float | None = None
        # Until the engine starts one of its sequences; then `admitted`.
        self.queue_timer: asyncio.TimerHandle | None = None
        self.admitted = False
        # Choices the engine client still tracks; at 0 the request settles, once.
        self.live_choices = 0
        self.on_settled: Callable[[GenerationRequest], None] | None = None
        self._settled = False
        # Streams wake to forward tokens; a whole response waits for the finish only.
        self.wake_on_tokens = True
        # A future only while the handler waits, and a flag for a wake-up before it does:
        # cheaper than an asyncio.Event, which this is woken as often as per engine step.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        # A background class's request: its wake-ups wait for their turn in this lane.
        self.lane: BackgroundLane | None = None
        self._wake_queued = False

    def add_choice(
        self, prompt_ids: list[int], params: SamplingParams, tokenizer: Tokenizer
    ) -> Choice:
        stop = StopChecker(params, tokenizer, with_text=True)
        assert stop.text is not None
        choice = Choice(len(self.choices), prompt_ids, params, stop, stop.text, self)
        self.choices.append(choice)
        return choice

    @property
    def finished(self) -> bool:
        return self.error is not None or all(c.finished for c in self.choices)

    @property
    def used_tokens(self) -> int:
        """Prompt tokens of the choices that started, plus every token generated."""
        return sum(
            (len(c.prompt_ids) if c.first_token_time is not None else 0) + c.num_output_tokens
            for c in self.choices
        )

    def settle(self) -> None:
        """No sequence of it is left in the engine: give back what it reserved, once."""
        if self._settled:
            return
        self._settled = True
        for timer in (self.queue_timer, self.timer):
            if timer is not None:
                timer.cancel()
        if self.on_settled is not None:
            self.on_settled(self)

    def fail(self, error: APIError) -> None:
        if self.error is None and not self.finished:
            self.error = error
        self.wake()

    def wake(self) -> None:
        """Something new happened (tokens, a finish, an error): end the handler's `wait`
        (in a later loop iteration, in its turn, for a background class's request)."""
        if self.lane is None:
            self._wake()
        elif not self._wake_queued:  # one turn takes every wake-up queued before it
            self._wake_queued = True
            self.lane.run(self._wake)

    def _wake(self) -> None:
        self._wake_queued = False
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next `wake`; at once if there was one since the last `wait` returned."""
        if not self._woken:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self._woken = False
