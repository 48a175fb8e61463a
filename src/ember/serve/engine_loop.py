"""The engine worker's loop: drain add/abort messages, run one step, report it, repeat.

The same loop runs in a worker process (messages over a socket) and, with `--in-process`,
on a thread of the server (messages through a queue). It blocks only while the engine has
nothing to do, so an idle worker costs no CPU and a busy one never waits on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from ember.engine.llm_engine import LLMEngine
from ember.errors import InvalidRequestError
from ember.serve.worker_protocol import (
    AbortRequests,
    AddRequest,
    RequestDelta,
    RequestRejected,
    ServerMessage,
    Shutdown,
    StepReport,
    WorkerMessage,
)


class Inbox(Protocol):
    def receive_all(self, block: bool) -> list[ServerMessage]:
        """Every message waiting; when `block`, waits until there is at least one."""
        ...


class EngineLoop:
    def __init__(
        self, engine: LLMEngine, inbox: Inbox, send: Callable[[WorkerMessage], None]
    ) -> None:
        self._engine = engine
        self._inbox = inbox
        self._send = send

    def run(self) -> None:
        """Serve until a `Shutdown` message arrives (or the inbox raises on a closed channel)."""
        engine = self._engine
        while True:
            busy = engine.has_unfinished_requests()
            messages = self._inbox.receive_all(block=not busy)
            if not self._handle(messages):
                return
            if engine.has_unfinished_requests():
                self._step()
            elif messages:
                # Nothing to run, but aborts may have freed blocks: report the new usage now.
                self._send(StepReport([], [], engine.stats()))

    def _handle(self, messages: Iterable[ServerMessage]) -> bool:
        engine = self._engine
        for message in messages:
            if isinstance(message, AddRequest):
                try:
                    engine.add_request(
                        message.request_id,
                        message.prompt_ids,
                        message.params,
                        message.cache_salt,
                        message.scheduling,
                    )
                except InvalidRequestError as error:
                    self._send(RequestRejected(message.request_id, str(error), error.param))
            elif isinstance(message, AbortRequests):
                for request_id in message.request_ids:
                    engine.abort(request_id)
            elif isinstance(message, Shutdown):
                return False
            else:
                raise TypeError(f"unexpected message for the engine worker: {message!r}")
        return True

    def _step(self) -> None:
        engine = self._engine
        outputs = engine.step()
        for request_id, error in engine.rejected:  # a grammar that failed to compile
            self._send(RequestRejected(request_id, str(error), error.param))
        deltas: list[RequestDelta] = [
            (out.request_id, out.new_token_ids, out.new_logprobs or None, out.finish_reason)
            for out in outputs
        ]
        self._send(StepReport(deltas, engine.admitted, engine.stats()))
