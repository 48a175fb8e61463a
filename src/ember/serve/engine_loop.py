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
    AbortSequences,
    AddSequence,
    SequenceDelta,
    SequenceRejected,
    Shutdown,
    StepReport,
    WorkerMessage,
)


class Inbox(Protocol):
    def receive_all(self, block: bool) -> list[object]:
        """Every message waiting; when `block`, waits until there is at least one."""
        ...


class EngineLoop:
    def __init__(
        self, engine: LLMEngine, inbox: Inbox, send: Callable[[WorkerMessage], None]
    ) -> None:
        self._engine = engine
        self._inbox = inbox
        self._send = send
        self._waiting: set[str] = set()

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

    def _handle(self, messages: Iterable[object]) -> bool:
        engine = self._engine
        for message in messages:
            if isinstance(message, AddSequence):
                request_id = str(message.seq_id)
                try:
                    engine.add_request(request_id, message.prompt_ids, message.params)
                except InvalidRequestError as error:
                    self._send(SequenceRejected(message.seq_id, str(error)))
                    continue
                self._waiting.add(request_id)
            elif isinstance(message, AbortSequences):
                for seq_id in message.seq_ids:
                    request_id = str(seq_id)
                    engine.abort(request_id)
                    self._waiting.discard(request_id)
            elif isinstance(message, Shutdown):
                return False
            else:
                raise TypeError(f"unexpected message for the engine worker: {message!r}")
        return True

    def _step(self) -> None:
        engine = self._engine
        outputs = engine.step()
        deltas: list[SequenceDelta] = [
            (
                int(out.request_id),
                out.new_token_ids,
                out.new_logprobs or None,
                None if out.finish_reason is None else out.finish_reason.value,
            )
            for out in outputs
        ]
        started: list[int] = []
        if self._waiting:
            produced = {out.request_id for out in outputs}
            for request_id in list(self._waiting):
                # Output means it ran, even if it already finished and left the engine.
                if request_id in produced or engine.is_running(request_id):
                    self._waiting.discard(request_id)
                    started.append(int(request_id))
        self._send(StepReport(deltas, started, engine.stats()))
