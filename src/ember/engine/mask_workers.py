"""A step's token masks computed in processes of their own: llguidance's masks do not scale over
threads of one process (docs/benchmarks.md), masks in separate processes do.

The engine keeps its own matcher per constrained sequence for everything but masks (consuming
tokens, finishing on a complete grammar). Each sequence is placed on one mask worker
(`engine/mask_worker.py`), which holds a mirror matcher compiled from the same spec and a row
of the shared masks (the sequence's slot). The worker is sent the tokens sampled since its last
mask of the sequence and writes the next mask into the slot; the step that runs the sequence
copies it out.

A mask is asked for as soon as the sequence's token is known (`ask`, when the engine collects a
step), not when the next step is built: the workers compute while the engine's thread does the
rest of the collection (stop checks, outputs). The request gives each row room for the tokens
its grammar then forces (engine/forced_tokens.py): the mirror takes them before its mask, and
the reply reports them. The engine waits for the replies at the end of the collection
(`take_forced`), since the next step's inputs need those tokens: so the masks are written
before the engine's thread goes on to the caller's turn, scheduling and the step's inputs
(with steps overlapping on a GPU, `fill` waited there anyway; a synchronous step's caller
now waits for them). A constrained sequence's next step cannot launch before its mask, so
this is the host's critical path on a GPU; for the same reason the engine's thread computes no
share of the masks while a worker is ready (a share there would be on that path).

A mirror is only ever the sequence's spec and its outputs, so a sequence can be placed again at
any time (all its outputs sent at once): one whose worker has not started yet, or died, or
failed it, has its masks computed on the engine's thread (the engine's matcher is always
current, so no request is lost) until it is placed on a worker again. A worker that dies, errs
or does not answer within `_REPLY_SECONDS` is killed, logged and replaced; a slot whose worker
fails `_MAX_FAILURES` times in a row is given up (its share stays on the engine's thread).
A worker has at most one request in flight, and a slot is freed only once no request that
names it is in flight, so a late write can never land in another sequence's mask.

Nothing outlives the engine: the shared masks are an anonymous `memfd` (no name to leak; freed
when the last process mapping it exits), and a worker exits when the engine's end of its socket
closes, which the kernel does when the engine's process ends, however it ends (`close()`, the
interpreter's exit, Ctrl-C, SIGKILL). `close()` (also run when the pool is collected or at
exit) ends and reaps the workers.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import ember
from ember.engine.grammar import GrammarCompiler, Masks
from ember.engine.mask_messages import (
    ENCODER,
    READY_DECODER,
    REPLY_DECODER,
    MaskReply,
    MaskRequest,
    MaskRow,
)
from ember.engine.sequence import Sequence

if TYPE_CHECKING:
    from ember.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# A step waits this long for a worker's masks before it gives up on the worker: a mask takes
# tens of microseconds, a whole step's share a few milliseconds; a compile runs on the worker's
# own thread and never holds a reply back.
_REPLY_SECONDS = 10.0
# Failures in a row (a start, or a request, that did not succeed) before a slot is given up.
_MAX_FAILURES = 3
_WORKER_MODULE = "ember.engine.mask_worker"
_ENGINE = -1  # the place of a sequence whose masks the engine's thread computes
# The engine's thread computes a share of the masks only where the workers hold this many more
# sequences each: its share is on the step's critical path, the workers' is computed while the
# engine's thread does the rest of its step (~1 ms on a 2-core machine, ~20 masks' time).
# With one worker it keeps ~a fifth, with 8 none.
_ENGINE_HEADROOM = 40


def mask_worker_count() -> int:
    """Mask worker processes for an engine: the CPUs this process may run on, less one for the
    engine's thread (which computes a share of the masks too), at most 8; none on one CPU
    (the in-process path), and none where the system has no `memfd_create` (not Linux). 64
    masks of the benchmark's schema are ~3.6 ms on one core of the H100 host; 8 workers and the
    engine's thread take ~7 each."""
    if not hasattr(os, "memfd_create"):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) - 1))


@dataclass(slots=True)
class _Placement:
    place: int  # a worker's slot, or _ENGINE
    sent: int  # outputs its mirror has taken (-1: its mirror is not made; unused on _ENGINE)
    row: int = -1  # its row of the shared masks (on a worker)
    masked: int = -1  # outputs the mask in `row` is for, once written (-1: none)


class _Worker:
    """One started worker process and the engine's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.ready = False
        self.gone: list[int] = []  # sequences to drop, sent with the next request
        # The request in flight (at most one): per shared row, its sequence, placement, the
        # outputs its mask will be for, and whether it has room for forced tokens; None when
        # nothing is in flight.
        self.asked: dict[int, tuple[int, _Placement, int, bool]] | None = None
        self.freeing: list[int] = []  # rows of released sequences, free once `asked` is answered

    def end(self) -> None:
        self.connection.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class MaskWorkers:
    """The engine's mask worker processes; `fill` is `GrammarCompiler.fill_masks` for a step's
    constrained sequences, `ask` starts their next masks as soon as their tokens are known.
    Workers start at the first `start()` or `fill`, in the background: a step never waits for
    one to start."""

    def __init__(
        self, grammars: GrammarCompiler, tokenizer: Tokenizer, count: int, max_rows: int
    ) -> None:
        """`grammars`: the engine's (its matchers compute the masks no worker does); `count`:
        worker processes; `max_rows`: the most constrained rows a step can have."""
        if count < 1:
            raise ValueError(f"a mask worker pool needs at least one worker, not {count}")
        self._grammars = grammars
        self._tokenizer = tokenizer
        self._count = count
        self._words = grammars.tokenizer_words
        self._max_rows = max_rows
        # A row per live sequence, and room for those released while a request names them.
        self._num_shared = 2 * max_rows
        self._free_rows = list(range(self._num_shared - 1, -1, -1))
        self._workers: list[_Worker | None] = [None] * count
        self._failures = [0] * count
        self._load = [0] * count  # live sequences placed on each worker
        self._engine_load = 0
        self._placements: dict[int, _Placement] = {}
        # Per sequence, the forced tokens its mirror took, until `take_forced`.
        self._forced: dict[int, list[int]] = {}
        self._memory_fd = -1
        self._tokenizer_fd = -1
        self._tokenizer_bytes = 0
        self._shared: Masks | None = None
        self._started = False
        # Run by `close()`, or when the pool is collected, or at the interpreter's exit.
        self._finalizer = weakref.finalize(self, _end_all, self._workers)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        size = self._num_shared * self._words * 4
        self._memory_fd = os.memfd_create("ember-token-masks")
        os.ftruncate(self._memory_fd, size)
        memory = mmap.mmap(self._memory_fd, size)
        self._shared = np.frombuffer(memory, np.int32).reshape(self._num_shared, self._words)
        pickled = pickle.dumps(self._tokenizer, protocol=pickle.HIGHEST_PROTOCOL)
        self._tokenizer_fd = os.memfd_create("ember-tokenizer")
        os.write(self._tokenizer_fd, pickled)
        self._tokenizer_bytes = len(pickled)
        for slot in range(self._count):
            self._spawn(slot)

    def wait_ready(self, timeout: float) -> bool:
        """Start the workers and wait until all have started, at most `timeout` seconds (tests
        and benchmarks; the engine never waits); whether they all have."""
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            self._check_started()
            if self.num_ready == self._count:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    @property
    def num_ready(self) -> int:
        return sum(1 for worker in self._workers if worker is not None and worker.ready)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    def release(self, seq: Sequence) -> None:
        """The sequence is finished or aborted: its mirror goes with the worker's next request."""
        placement = self._placements.pop(seq.seq_id, None)
        self._forced.pop(seq.seq_id, None)
        if placement is None:
            return
        if placement.place == _ENGINE:
            self._engine_load -= 1
            return
        self._load[placement.place] -= 1
        worker = self._workers[placement.place]
        if worker is None:
            self._free_rows.append(placement.row)
            return
        worker.gone.append(seq.seq_id)
        if worker.asked is None:
            self._free_rows.append(placement.row)
        else:
            worker.freeing.append(placement.row)

    def ask(self, tokens: list[tuple[Sequence, int, int]]) -> set[int]:
        """Each sequence's sampled `token` (not yet appended) and `room` for forced tokens: its
        worker takes the token, then up to `room` tokens its grammar forces (jump-forward), and
        computes the mask after them now, which `fill` then finds written. Returns the ids of
        the sequences asked (their forced tokens come from `take_forced`; the others' are for
        the engine's thread to find). Sequences not on a ready worker are left to `fill`;
        nothing waits here but for a worker's earlier reply."""
        if not self._started or not tokens:
            return set()
        self._drain()
        requests: dict[int, list[MaskRow]] = {}
        asked: set[int] = set()
        for seq, token_id, room in tokens:
            placement = self._placements.get(seq.seq_id)
            if placement is None or placement.place == _ENGINE:
                continue
            row = self._row(seq, placement, token_id, room)
            requests.setdefault(placement.place, []).append(row)
            asked.add(seq.seq_id)
        self._send(requests)
        return asked

    def take_forced(self) -> dict[int, list[int]]:
        """Per sequence asked with room since the last call, the tokens its mirror took as
        forced, none included (after their replies: this waits for them). The engine's
        sequence must take the same tokens: its mirror has. A sequence left out was not
        answered (its worker failed, or its mirror is still compiling): the engine's thread
        finds its forced tokens."""
        self._drain()
        forced, self._forced = self._forced, {}
        return forced

    def fill(self, seqs: list[Sequence], out: Masks) -> None:
        """Row i of `out` (int32 [>= len(seqs), mask_words]) = seqs[i]'s mask now (every one
        of `seqs` has a grammar)."""
        self.start()
        self._check_started()
        shared = self._shared
        assert shared is not None
        if len(seqs) > self._max_rows:
            raise ValueError(f"{len(seqs)} masks in one step; this pool holds {self._max_rows}")
        self._drain()  # masks asked for when the tokens came
        requests: dict[int, list[MaskRow]] = {}
        own: list[int] = []
        on_workers: list[int] = []
        ready = [slot for slot, w in enumerate(self._workers) if w is not None and w.ready]
        for row, seq in enumerate(seqs):
            placement = self._place(seq, ready)
            if placement.place == _ENGINE:
                own.append(row)
                continue
            on_workers.append(row)
            if placement.masked != seq.num_output_tokens:
                requests.setdefault(placement.place, []).append(self._row(seq, placement))
        self._send(requests)
        self._fill_here(seqs, own, out)
        self._drain()
        written: list[int] = []
        shared_rows: list[int] = []
        redo: list[int] = []
        for row in on_workers:
            seq = seqs[row]
            now = self._placements.get(seq.seq_id)
            if now is None or now.masked != seq.num_output_tokens:
                redo.append(row)  # its worker failed it, or it is still compiling
            else:
                written.append(row)
                shared_rows.append(now.row)
        if written:
            self._copy(shared, shared_rows, written, out)
        self._fill_here(seqs, redo, out)

    def ping(self) -> None:
        """An empty request to every started worker, and their replies: the round trip a step
        pays (benchmarks)."""
        self._check_started()
        self._drain()
        empty: dict[int, list[MaskRow]] = {
            slot: [] for slot, w in enumerate(self._workers) if w is not None and w.ready
        }
        self._send(empty)
        self._drain()

    def _row(
        self, seq: Sequence, placement: _Placement, token_id: int | None = None, room: int = 0
    ) -> MaskRow:
        """The request for the sequence's mask after its outputs (and `token_id`, sampled but
        not appended yet, and up to `room` forced tokens): the outputs its mirror has not taken,
        or with its spec, all of them for a new mirror."""
        fresh = placement.sent < 0
        outputs = seq.token_ids[seq.num_prompt_tokens + max(placement.sent, 0) :]
        if token_id is not None:
            outputs.append(token_id)
        placement.sent = seq.num_output_tokens + (token_id is not None)
        placement.masked = -1
        spec = seq.params.structured if fresh else None
        return MaskRow(seq.seq_id, placement.row, outputs, spec, room)

    def _check_started(self) -> None:
        """Workers whose readiness arrived take sequences from now on; ones that died while
        starting are replaced."""
        for slot, worker in enumerate(self._workers):
            if worker is None or worker.ready:
                continue
            try:
                if not worker.connection.poll():
                    continue
                READY_DECODER.decode(worker.connection.recv_bytes())
            except (EOFError, OSError) as error:
                self._fail(slot, f"it exited while starting ({error or 'no message'})")
                continue
            worker.ready = True

    def _place(self, seq: Sequence, ready: list[int]) -> _Placement:
        """Where the sequence's mask is computed: on the least loaded ready worker, or on the
        engine's thread while none is ready (or no shared row is free) or while the least
        loaded holds `_ENGINE_HEADROOM` more sequences than the engine's thread. A sequence
        on the engine's thread moves to a worker once that holds (`sent` -1: its mirror must
        be made)."""
        placement = self._placements.get(seq.seq_id)
        if placement is not None and placement.place != _ENGINE:
            return placement
        least = min(ready, key=self._load.__getitem__) if ready else None
        engine_load = self._engine_load - (placement is not None)
        if (
            least is None
            or not self._free_rows
            or self._load[least] >= engine_load + 1 + _ENGINE_HEADROOM
        ):
            if placement is None:
                placement = self._placements[seq.seq_id] = _Placement(_ENGINE, 0)
                self._engine_load += 1
            return placement
        if placement is not None:
            self._engine_load -= 1
        self._load[least] += 1
        placement = _Placement(least, -1, self._free_rows.pop())
        self._placements[seq.seq_id] = placement
        return placement

    def _send(self, requests: dict[int, list[MaskRow]]) -> None:
        for slot, rows in requests.items():
            worker = self._workers[slot]
            assert worker is not None and worker.asked is None
            asked = {}
            for row in rows:
                placement = self._placements[row.seq_id]
                asked[row.row] = (row.seq_id, placement, placement.sent, row.room > 0)
            try:
                worker.connection.send_bytes(ENCODER.encode(MaskRequest(rows, worker.gone)))
            except OSError as error:
                self._fail(slot, f"its socket failed ({error})")
                continue
            worker.gone = []
            worker.asked = asked

    def _drain(self) -> None:
        """Wait for every request in flight; the masks they wrote are current from now on."""
        waiting = {
            w.connection: slot
            for slot, w in enumerate(self._workers)
            if w is not None and w.asked is not None
        }
        deadline = time.monotonic() + _REPLY_SECONDS
        while waiting:
            readable = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not readable:
                for slot in waiting.values():
                    self._fail(slot, f"it did not answer within {_REPLY_SECONDS:.0f} s")
                return
            for connection in readable:
                slot = waiting.pop(connection)  # type: ignore[call-overload]
                try:
                    reply = REPLY_DECODER.decode(connection.recv_bytes())  # type: ignore[union-attr]
                except (EOFError, OSError) as error:
                    self._fail(slot, f"it exited ({error or 'no reply'})")
                    continue
                self._answered(slot, reply)

    def _answered(self, slot: int, reply: MaskReply) -> None:
        worker = self._workers[slot]
        assert worker is not None and worker.asked is not None
        asked, worker.asked = worker.asked, None
        self._failures[slot] = 0
        failed = reply.failed
        skipped = set(reply.not_ready) | set(failed)
        for row, (seq_id, placement, outputs, room) in asked.items():
            if row in skipped:
                if row in failed:  # its mirror is gone: placed again at its next mask
                    self._unplace(seq_id, placement)
            elif placement.sent == outputs:  # no later request is behind this one
                if room and self._placements.get(seq_id) is placement:  # still live
                    forced = reply.forced.get(row, [])
                    placement.sent += len(forced)
                    self._forced[seq_id] = forced
                placement.masked = placement.sent
        self._free_rows += worker.freeing
        worker.freeing = []

    def _unplace(self, seq_id: int, placement: _Placement) -> None:
        if self._placements.get(seq_id) is not placement:
            return  # released meanwhile
        del self._placements[seq_id]
        self._load[placement.place] -= 1
        self._free_rows.append(placement.row)

    def _copy(self, shared: Masks, rows: list[int], to: list[int], out: Masks) -> None:
        cut = np.empty((len(rows), out.shape[1]), np.int32)
        self._grammars.cut_masks(shared[rows], cut)
        out[to] = cut

    def _fill_here(self, seqs: list[Sequence], rows: list[int], out: Masks) -> None:
        if not rows:
            return
        masks = np.empty((len(rows), out.shape[1]), np.int32)
        self._grammars.fill_masks([seqs[row].grammar for row in rows], masks)  # type: ignore[misc]
        out[rows] = masks

    def _fail(self, slot: int, why: str) -> None:
        """End the slot's worker; its sequences go back to the engine's thread until placed
        again; a new worker is started unless this slot keeps failing."""
        worker = self._workers[slot]
        assert worker is not None
        worker.end()  # reaped: nothing it was asked can be written any more
        self._workers[slot] = None
        for seq_id in [s for s, p in self._placements.items() if p.place == slot]:
            self._free_rows.append(self._placements.pop(seq_id).row)
        self._free_rows += worker.freeing
        self._load[slot] = 0
        self._failures[slot] += 1
        if self._failures[slot] >= _MAX_FAILURES:
            log.error(
                "mask worker %d (pid %d) failed: %s; it failed %d times in a row, so its share "
                "of the masks stays on the engine's thread",
                slot,
                worker.process.pid,
                why,
                self._failures[slot],
            )
            return
        log.warning(
            "mask worker %d (pid %d) failed: %s; its sequences' masks are computed by the "
            "engine until a new worker starts",
            slot,
            worker.process.pid,
            why,
        )
        self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (theirs.fileno(), self._memory_fd, self._tokenizer_fd)
        args = [*map(str, fds), str(self._tokenizer_bytes), str(self._max_rows), str(self._words)]
        # The worker imports the same Ember as the engine, whatever the engine's sys.path.
        package_root = str(Path(ember.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", _WORKER_MODULE, *args],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as error:
            ours.close()
            log.error("mask worker %d did not start: %s; the engine does its share", slot, error)
            return
        finally:
            theirs.close()
        self._workers[slot] = _Worker(process, Connection(ours.detach()))

    def close(self) -> None:
        """End and reap the workers; free the shared memory."""
        self._finalizer()
        self._shared = None
        for fd in (self._memory_fd, self._tokenizer_fd):
            if fd >= 0:
                os.close(fd)
        self._memory_fd = self._tokenizer_fd = -1


def _end_all(workers: list[_Worker | None]) -> None:
    for worker in workers:
        if worker is not None:
            worker.connection.close()  # its recv sees the end: it exits by itself
    for slot, worker in enumerate(workers):
        if worker is None:
            continue
        try:
            worker.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        workers[slot] = None
