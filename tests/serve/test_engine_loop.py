"""The worker's loop over the real engine, driven through the real socket framing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.model.loader import LoadedModel
from ember.serve.engine_loop import EngineLoop
from ember.serve.worker_protocol import (
    SERVER_MESSAGES,
    WORKER_MESSAGES,
    AbortRequests,
    AddRequest,
    ChannelClosedError,
    FrameSocket,
    RequestRejected,
    Shutdown,
    StepReport,
    encode_frame,
)


class LoopUnderTest:
    def __init__(self, engine: LLMEngine) -> None:
        ours, theirs = socket.socketpair()
        self.server = FrameSocket(ours, WORKER_MESSAGES)
        self.worker = FrameSocket(theirs, SERVER_MESSAGES)
        self.thread = threading.Thread(
            target=EngineLoop(engine, self.worker, self.worker.send).run, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.worker.close()

    def next_message(self) -> object:
        return self.server.receive_all(block=True)[0]

    def reports_until(self, request_id: int) -> Iterator[StepReport]:
        """Step reports until `request_id` finishes (or is no longer in the engine)."""
        while True:
            for message in self.server.receive_all(block=True):
                assert isinstance(message, StepReport)
                yield message
                if any(d[0] == request_id and d[3] is not None for d in message.deltas):
                    return


@pytest.fixture()
def loop(default_model: LoadedModel) -> Iterator[LoopUnderTest]:
    engine = LLMEngine(EngineConfig(detokenize=False, num_kv_blocks=64), model=default_model)
    under_test = LoopUnderTest(engine)
    yield under_test
    under_test.server.send(Shutdown())
    under_test.thread.join(60)
    assert not under_test.thread.is_alive()
    under_test.close()


def test_a_sequence_runs_to_its_token_limit_with_one_report_per_step(loop: LoopUnderTest) -> None:
    prompt = [504, 3575, 282, 4649, 314]
    loop.server.send(AddRequest(7, prompt, SamplingParams(max_tokens=3, temperature=0)))
    reports = list(loop.reports_until(7))
    tokens = [t for r in reports for seq, ids, _, _ in r.deltas if seq == 7 for t in ids]
    assert len(tokens) == 3 and tokens[0] == 7042  # " Paris"
    assert [d[3] for r in reports for d in r.deltas] == [None, None, FinishReason.LENGTH]
    assert 7 in [s for r in reports for s in r.admitted]
    assert reports[-1].stats.kv_usage == 0 and reports[-1].stats.num_running == 0


def test_abort_frees_the_blocks_before_the_next_step(loop: LoopUnderTest) -> None:
    params = SamplingParams(max_tokens=500, ignore_eos=True)
    loop.server.send(AddRequest(1, [504, 3575, 282] * 20, params))
    first = next(loop.reports_until(1))
    while not any(d[0] == 1 for d in first.deltas):
        first = next(loop.reports_until(1))
    assert first.stats.kv_usage > 0
    loop.server.send(AbortRequests([1]))
    # Reports already in flight may still show the sequence; the first one after the abort
    # was handled shows its blocks free, without a step in between that ran it.
    for report in loop.reports_until(1):
        if not any(d[0] == 1 for d in report.deltas):
            assert report.stats.kv_usage == 0 and report.stats.num_running == 0
            break


def test_a_request_the_engine_refuses_is_rejected_not_fatal(loop: LoopUnderTest) -> None:
    loop.server.send(AddRequest(3, [10**7], SamplingParams(max_tokens=1)))
    rejected = loop.next_message()
    assert isinstance(rejected, RequestRejected) and rejected.request_id == 3
    assert "vocabulary" in rejected.message or "token" in rejected.message
    loop.server.send(AddRequest(4, [504], SamplingParams(max_tokens=1)))
    assert any(d[0] == 4 for r in loop.reports_until(4) for d in r.deltas)


def test_frames_split_at_any_byte_are_reassembled() -> None:
    ours, theirs = socket.socketpair()
    receiver = FrameSocket(theirs, SERVER_MESSAGES)
    frames = encode_frame(AbortRequests([1, 2])) + encode_frame(Shutdown())
    for i in range(len(frames)):
        ours.sendall(frames[i : i + 1])
    received: list[object] = []
    while len(received) < 2:
        received += receiver.receive_all(block=True)
    assert received == [AbortRequests([1, 2]), Shutdown()]
    assert receiver.receive_all(block=False) == []
    ours.close()
    with pytest.raises(ChannelClosedError):
        receiver.receive_all(block=True)
    receiver.close()
