"""Token masks computed in worker processes (real processes, real llguidance, the tiny model's
tokenizer): the same bytes as the engine's own matchers step after step while sequences join,
move and leave; a worker killed or hung mid-run costs no request and is replaced; nothing is
left running after `close()` or after the engine's process is killed; a worker's own rules
(rows wait for their compile, a mirror that cannot follow fails its row)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest

import ember.engine.mask_workers as mask_workers_module
from ember.engine.config import EngineConfig
from ember.engine.grammar import GrammarCompiler
from ember.engine.llm_engine import LLMEngine
from ember.engine.mask_messages import MaskReply, MaskRequest, MaskRow
from ember.engine.mask_worker import MaskWorker
from ember.engine.mask_workers import MaskWorkers
from ember.engine.sampling_params import SamplingParams
from ember.engine.structured_output import StructuredKind, StructuredOutput
from ember.model.loader import LoadedModel
from tests.engine.test_structured_output import CHOICE, JSON, REGEX, check, constrained, run

SPECS = (JSON, CHOICE, REGEX)
ANSWERS = {
    JSON: json.dumps({"id": 417, "ok": True, "tag": "beta"}),
    CHOICE: "green",
    REGEX: "123-ab",
}


@dataclass
class _Params:
    structured: StructuredOutput


@dataclass
class _Seq:
    """What `MaskWorkers.fill` reads of a `Sequence`."""

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: _Params
    grammar: object

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(_alive(pid) for pid in pids)


def test_masks_are_the_engines_own_step_after_step(tiny_model: LoadedModel) -> None:
    """Sequences join (first on the engine's thread, the workers still starting; then moved to
    them), take a token a step, and leave; every step's masks are byte for byte the matchers'
    own, with rows on both workers and on the engine's thread."""
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer, threads=1)
    reference = GrammarCompiler(tokenizer)
    workers = MaskWorkers(grammars, tokenizer, count=2, max_rows=16)
    try:
        answers = {s: tokenizer.encode(ANSWERS[s], add_special_tokens=False) for s in SPECS}
        live: list[_Seq] = []
        next_id = 0
        places: set[int] = set()
        for step in range(200):
            if not live and next_id == 14:
                break
            if step % 3 == 0 and next_id < 14:  # one joins every third step
                spec = SPECS[next_id % 3]
                matcher = grammars.matcher(spec)
                live.append(_Seq(next_id, [1, 2, 3], 3, _Params(spec), matcher))
                next_id += 1
            if step == 4:
                assert workers.wait_ready(30)
            out = np.full((16, grammars.mask_words), -1, np.int32)
            workers.fill(live, out)  # type: ignore[arg-type]
            expected = np.zeros((len(live), grammars.mask_words), np.int32)
            reference.fill_masks([seq.grammar for seq in live], expected)  # type: ignore[misc]
            np.testing.assert_array_equal(out[: len(live)], expected, err_msg=f"step {step}")
            assert (out[len(live) :] == -1).all()  # no row past the step's
            places |= {p.place for p in workers._placements.values()}
            for seq in list(live):  # each takes its answer's next token, or leaves at its end
                answer = answers[seq.params.structured]
                done = seq.num_output_tokens
                if done == len(answer):
                    live.remove(seq)
                    workers.release(seq)  # type: ignore[arg-type]
                    continue
                assert seq.grammar.consume_token(answer[done])  # type: ignore[attr-defined]
                seq.token_ids.append(answer[done])
        assert places == {-1, 0, 1}
        assert not live and not workers._placements
    finally:
        workers.close()


def test_masks_asked_for_when_tokens_come_are_the_ones_the_next_step_uses(
    tiny_model: LoadedModel,
) -> None:
    """`ask` with each step's tokens (as the engine does when it collects them): the next
    `fill` sends nothing for those sequences and its masks are still the matchers' own, while
    sequences join, and leave on the token they were just asked for (their shared rows, still
    named by a request in flight, go to no one else until it is answered)."""
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer, threads=1)
    reference = GrammarCompiler(tokenizer)
    workers = MaskWorkers(grammars, tokenizer, count=2, max_rows=8)
    sent_by_fill: list[int] = []
    send = workers._send

    def recording_send(requests: dict[int, list[MaskRow]]) -> None:
        sent_by_fill.extend(row.seq_id for rows in requests.values() for row in rows)
        send(requests)

    try:
        assert workers.wait_ready(30)
        # Each worker compiles each spec once, in the background (its rows wait meanwhile):
        # from then on a new sequence's mirror is a copy, and its first mask comes at once.
        warm = [_Seq(100 + i, [1], 1, _Params(SPECS[i % 3]), None) for i in range(6)]
        deadline = time.monotonic() + 30
        for seq in warm:
            seq.grammar = grammars.matcher(seq.params.structured)
        while any(workers._placements.get(s.seq_id) is None for s in warm) or any(
            workers._placements[s.seq_id].masked != 0 for s in warm
        ):
            assert time.monotonic() < deadline
            workers.fill(warm, np.zeros((6, grammars.mask_words), np.int32))  # type: ignore[arg-type]
        for seq in warm:
            workers.release(seq)  # type: ignore[arg-type]
        answers = {s: tokenizer.encode(ANSWERS[s], add_special_tokens=False) for s in SPECS}
        live: list[_Seq] = []
        next_id = 0
        steps = 0
        while live or next_id < 12:
            if next_id < 12 and len(live) < 8:
                spec = SPECS[next_id % 3]
                live.append(_Seq(next_id, [1, 2], 2, _Params(spec), grammars.matcher(spec)))
                next_id += 1
            new = {seq.seq_id for seq in live if seq.seq_id not in workers._placements}
            sent_by_fill.clear()
            workers._send = recording_send  # type: ignore[method-assign]
            out = np.full((8, grammars.mask_words), -1, np.int32)
            workers.fill(live, out)  # type: ignore[arg-type]
            workers._send = send  # type: ignore[method-assign]
            assert set(sent_by_fill) == new, f"step {steps}"
            expected = np.zeros((len(live), grammars.mask_words), np.int32)
            reference.fill_masks([seq.grammar for seq in live], expected)  # type: ignore[misc]
            np.testing.assert_array_equal(out[: len(live)], expected, err_msg=f"step {steps}")
            tokens = []
            for seq in live:
                answer = answers[seq.params.structured]
                tokens.append((seq, answer[seq.num_output_tokens]))
            workers.ask([(seq, token_id, 0) for seq, token_id in tokens])  # type: ignore[misc]
            in_flight = {p.row for p in workers._placements.values() if p.place >= 0}
            for seq, token_id in tokens:
                assert seq.grammar.consume_token(token_id)  # type: ignore[attr-defined]
                seq.token_ids.append(token_id)
                if seq.num_output_tokens == len(answers[seq.params.structured]):
                    live.remove(seq)
                    workers.release(seq)  # type: ignore[arg-type]
            assert not in_flight & set(workers._free_rows)  # freed once answered
            steps += 1
        assert not workers._placements
        assert len(workers._free_rows) == 16 or any(w and w.asked for w in workers._workers)
    finally:
        workers.close()


def test_a_killed_worker_costs_no_request(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-run: its sequences' masks are the engine's until a new worker takes
    them, and every request's tokens are those of an engine without workers."""
    requests = {seed: ("Go:", constrained(SPECS[seed % 3], seed)) for seed in range(6)}
    requests[9] = ("Free", SamplingParams(max_tokens=20, seed=2, ignore_eos=True))
    alone = LLMEngine(
        EngineConfig(num_kv_blocks=64, max_num_seqs=8, show_progress=False, mask_workers=0),
        model=tiny_model,
    )
    expected = run(alone, dict(requests))
    engine = LLMEngine(
        EngineConfig(num_kv_blocks=64, max_num_seqs=8, show_progress=False, mask_workers=2),
        model=tiny_model,
    )
    workers = engine.mask_workers
    assert workers is not None
    try:
        assert workers.wait_ready(30)
        before = workers.pids()
        for request_id, (prompt, params) in requests.items():
            engine.add_request(request_id, prompt, params)
        out: dict[int, list[int]] = {request_id: [] for request_id in requests}
        killed_at = None
        with caplog.at_level(logging.WARNING, "ember.engine.mask_workers"):
            while engine.has_unfinished_requests():
                on_first = any(p.place == 0 for p in workers._placements.values())
                if killed_at is None and on_first:  # mid-run: it holds mirrors
                    os.kill(before[0], signal.SIGKILL)
                    killed_at = sum(map(len, out.values()))
                for output in engine.step():
                    out[output.request_id] += output.new_token_ids
        assert killed_at is not None and killed_at < sum(map(len, out.values())) // 2
        assert out == expected
        for request_id, ids in out.items():
            if request_id != 9:
                check(SPECS[request_id % 3], tiny_model.tokenizer.decode(ids))
        assert "mask worker 0" in caplog.text and "failed" in caplog.text
        assert workers.pids()[0] != before[0] and workers.pids()[1] == before[1]
    finally:
        engine.close()


def test_a_hung_worker_is_replaced(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that does not answer in time is killed; the step's masks are still right."""
    monkeypatch.setattr(mask_workers_module, "_REPLY_SECONDS", 0.3)
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer, threads=1)
    workers = MaskWorkers(grammars, tokenizer, count=1, max_rows=4)
    try:
        assert workers.wait_ready(30)
        spec = StructuredOutput(StructuredKind.REGEX, r"[0-9]{3}-[a-z]{2}")
        seqs = [_Seq(i, [1], 1, _Params(spec), grammars.matcher(spec)) for i in range(4)]
        out = np.zeros((4, grammars.mask_words), np.int32)
        workers.fill(seqs, out)  # type: ignore[arg-type]
        hung = workers.pids()[0]
        assert any(p.place == 0 for p in workers._placements.values())
        os.kill(hung, signal.SIGSTOP)
        for seq in seqs:
            assert seq.grammar.consume_token(tokenizer.encode("4", add_special_tokens=False)[0])  # type: ignore[attr-defined]
            seq.token_ids += tokenizer.encode("4", add_special_tokens=False)
        started = time.monotonic()
        workers.fill(seqs, out)  # type: ignore[arg-type]
        assert time.monotonic() - started < 5
        expected = np.zeros_like(out)
        GrammarCompiler(tokenizer).fill_masks([seq.grammar for seq in seqs], expected)  # type: ignore[misc]
        np.testing.assert_array_equal(out, expected)
        assert _gone_within([hung], 5)
        assert workers.pids() and workers.pids()[0] != hung
    finally:
        workers.close()


def test_nothing_is_left_after_close(tiny_model: LoadedModel) -> None:
    engine = LLMEngine(
        EngineConfig(num_kv_blocks=64, max_num_seqs=4, show_progress=False, mask_workers=2),
        model=tiny_model,
    )
    assert engine.mask_workers is not None
    run(engine, {1: ("Go:", constrained(JSON, 1))})
    assert engine.mask_workers.wait_ready(30)
    pids = engine.mask_workers.pids()
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    engine.close()
    assert not any(_alive(pid) for pid in pids)  # ended and reaped, not zombies
    assert not engine.mask_workers.pids()


def test_workers_end_with_a_killed_engine_process(tiny_model: LoadedModel) -> None:
    """The engine's process killed (no close, no exit handlers): its workers see their socket
    close and exit by themselves."""
    script = textwrap.dedent(
        f"""
        from ember.engine.grammar import GrammarCompiler
        from ember.engine.mask_workers import MaskWorkers
        from ember.model.loader import load_model

        tokenizer = load_model({str(tiny_model.path)!r}, "cpu", False).tokenizer
        workers = MaskWorkers(GrammarCompiler(tokenizer, threads=1), tokenizer, 2, 4)
        assert workers.wait_ready(30)
        print(*workers.pids(), flush=True)
        input()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as engine:
        try:
            assert engine.stdout is not None
            pids = [int(pid) for pid in engine.stdout.readline().split()]
            assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        finally:
            engine.kill()
            engine.wait()
    # Orphans are reaped by init (or the container's), so "gone" means exited and reaped.
    assert _gone_within(pids, 10), [pid for pid in pids if _alive(pid)]


def test_a_worker_masks_compiles_in_the_background_and_fails_what_it_cannot_follow(
    tiny_model: LoadedModel,
) -> None:
    """`MaskWorker.serve` in this process: rows wait while their spec compiles (their tokens
    kept), then are the engine's masks; a row whose tokens its mirror rejects, or of a sequence
    it does not know, fails, and the mirror goes."""
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer)
    masks = np.zeros((4, grammars.tokenizer_words), np.int32)
    worker = MaskWorker(tokenizer, masks)
    try:
        ids = tokenizer.encode(ANSWERS[REGEX], add_special_tokens=False)
        first = MaskRequest([MaskRow(7, 2, ids[:2], REGEX)], [])
        reply = worker.serve(first)
        deadline = time.monotonic() + 30
        while reply.not_ready and time.monotonic() < deadline:  # compiling on its thread
            time.sleep(0.01)
            reply = worker.serve(MaskRequest([MaskRow(7, 2, [])], []))
        assert reply == MaskReply([], [])
        engine = grammars.matcher(REGEX)
        assert engine.consume_tokens(ids[:2])
        expected = np.zeros((1, grammars.tokenizer_words), np.int32)
        grammars.fill_masks([engine], expected)
        np.testing.assert_array_equal(masks[2], expected[0])
        letter = tokenizer.encode("x", add_special_tokens=False)
        assert worker.serve(MaskRequest([MaskRow(7, 1, letter)], [])) == MaskReply([], [1])
        assert worker.serve(MaskRequest([MaskRow(7, 1, [])], [])) == MaskReply([], [1])
        assert worker.serve(MaskRequest([MaskRow(8, 9, [], REGEX)], [])).failed == [9]
    finally:
        worker.close()


def test_a_mirror_gone_astray_falls_back_to_the_engines_matcher(tiny_model: LoadedModel) -> None:
    """A sequence whose mirror rejects its tokens (here: the engine's matcher rejected them
    too) gets the engine's mask at every step: before its worker's compile is done, and once
    the worker fails its row."""
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer, threads=1)
    reference = GrammarCompiler(tokenizer)
    workers = MaskWorkers(grammars, tokenizer, count=1, max_rows=4)
    unplaced: list[int] = []
    unplace = workers._unplace
    workers._unplace = lambda seq_id, placement: (  # type: ignore[method-assign,assignment]
        unplaced.append(seq_id),  # type: ignore[func-returns-value]
        unplace(seq_id, placement),
    )
    try:
        assert workers.wait_ready(30)
        seqs = [_Seq(i, [1], 1, _Params(CHOICE), grammars.matcher(CHOICE)) for i in range(2)]
        out = np.zeros((2, grammars.mask_words), np.int32)
        workers.fill(seqs, out)  # type: ignore[arg-type]
        on_worker = next(seq for seq in seqs if workers._placements[seq.seq_id].place == 0)
        wrong = tokenizer.encode("purple", add_special_tokens=False)[0]
        assert not on_worker.grammar.consume_token(wrong)  # type: ignore[attr-defined]
        on_worker.token_ids.append(wrong)
        expected = np.zeros_like(out)
        deadline = time.monotonic() + 30
        while not unplaced:
            assert time.monotonic() < deadline
            workers.fill(seqs, out)  # type: ignore[arg-type]
            reference.fill_masks([seq.grammar for seq in seqs], expected)  # type: ignore[misc]
            np.testing.assert_array_equal(out, expected)
        assert unplaced == [on_worker.seq_id]
    finally:
        workers.close()


def test_a_worker_that_cannot_start_is_given_up(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that exits while starting is started again, at most `_MAX_FAILURES` times in
    all; every mask meanwhile is the engine's own."""
    monkeypatch.setattr(mask_workers_module, "_WORKER_MODULE", "ember.engine.no_such_worker")
    tokenizer = tiny_model.tokenizer
    grammars = GrammarCompiler(tokenizer, threads=1)
    workers = MaskWorkers(grammars, tokenizer, count=1, max_rows=4)
    try:
        seqs = [_Seq(i, [1], 1, _Params(REGEX), grammars.matcher(REGEX)) for i in range(3)]
        out = np.zeros((3, grammars.mask_words), np.int32)
        expected = np.zeros_like(out)
        GrammarCompiler(tokenizer).fill_masks([seq.grammar for seq in seqs], expected)  # type: ignore[misc]
        deadline = time.monotonic() + 30
        with caplog.at_level(logging.WARNING, "ember.engine.mask_workers"):
            workers.start()
            while workers.pids() and time.monotonic() < deadline:
                workers.fill(seqs, out)  # type: ignore[arg-type]
                np.testing.assert_array_equal(out, expected)
                time.sleep(0.01)
        assert not workers.pids()
        assert caplog.text.count("exited while starting") == 3
        assert "stays on the engine's thread" in caplog.text
    finally:
        workers.close()
