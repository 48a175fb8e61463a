"""A mask worker process: a mirror matcher for each sequence the engine gave it, and their token
masks written into memory the engine maps too (`engine/mask_workers.py` starts and feeds it).

Started as `python -m ember.engine.mask_worker SOCKET MASKS TOKENIZER TOKENIZER_BYTES ROWS
WORDS`, the numbers being file descriptors it inherits and sizes: its end of a socket pair to
the engine, the shared masks (int32 [ROWS, WORDS], the tokenizer's width) and the engine's
`Tokenizer`, pickled (our own parent's bytes, never a peer's). A mirror is compiled here from
the sequence's `StructuredOutput` (a `GrammarCompiler` of its own, so a spec sent again is a
copy) and follows the engine's matcher by taking the same tokens, so its masks are the
engine's. Masks are computed one after another on the main thread: a process per core, not
threads, is what scales (docs/benchmarks.md).

It ignores SIGINT (the engine decides when its workers end) and exits when the engine's end of
the socket closes, which the kernel does when the engine process dies however it dies.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import numpy as np

from ember.engine.forced_tokens import force
from ember.engine.grammar import GrammarCompiler, Masks
from ember.engine.mask_messages import (
    ENCODER,
    REQUEST_DECODER,
    MaskReply,
    MaskRequest,
    MaskWorkerReady,
)
from ember.errors import EmberError

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from ember.model.tokenizer import Tokenizer


@dataclass(slots=True)
class _Mirror:
    compiling: Future[LLMatcher]
    # Tokens taken while its grammar compiled, consumed before its first mask.
    backlog: list[int] = field(default_factory=list)
    matcher: LLMatcher | None = None

    def ready(self) -> LLMatcher | None:
        """Its matcher, once compiled; raises what the compile raised."""
        if self.matcher is None and self.compiling.done():
            self.matcher = self.compiling.result()
        return self.matcher


class MaskWorker:
    def __init__(self, tokenizer: Tokenizer, masks: Masks) -> None:
        self._grammars = GrammarCompiler(tokenizer, threads=1)
        self._masks = masks
        self._mirrors: dict[int, _Mirror] = {}

    def warm(self) -> None:
        self._grammars.lltokenizer()

    @property
    def native_tokenizer(self) -> bool | None:
        """Whether its masks are computed with no call into Python (None before `warm`)."""
        return self._grammars.native_tokenizer

    def serve(self, request: MaskRequest) -> MaskReply:
        for seq_id in request.gone:
            self._mirrors.pop(seq_id, None)
        not_ready: list[int] = []
        failed: list[int] = []
        forced: dict[int, list[int]] = {}
        masks = self._masks
        words = masks.shape[1]
        for row in request.rows:
            if row.spec is not None:
                self._mirrors[row.seq_id] = _Mirror(self._grammars.submit(row.spec))
            mirror = self._mirrors.get(row.seq_id)
            if mirror is None or not 0 <= row.row < masks.shape[0]:
                failed.append(row.row)
                continue
            mirror.backlog += row.tokens
            try:
                matcher = mirror.ready()
            except EmberError:  # the engine compiled it; a failure here is the worker's own
                del self._mirrors[row.seq_id]
                failed.append(row.row)
                continue
            if matcher is None:
                not_ready.append(row.row)
                continue
            if mirror.backlog:
                accepted = matcher.consume_tokens(mirror.backlog)
                mirror.backlog = []
                if not accepted:  # the engine's matcher took them: this mirror went astray
                    del self._mirrors[row.seq_id]
                    failed.append(row.row)
                    continue
            if row.room:
                tokens = force(matcher, row.room)
                if tokens:
                    forced[row.row] = tokens
            matcher.unsafe_compute_mask_ptr(masks.ctypes.data + row.row * words * 4, words * 4)
        return MaskReply(not_ready, failed, forced)

    def close(self) -> None:
        self._grammars.close()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    socket_fd, masks_fd, tokenizer_fd, tokenizer_bytes, rows, words = (int(a) for a in argv)
    connection = Connection(socket_fd)
    with mmap.mmap(tokenizer_fd, tokenizer_bytes, prot=mmap.PROT_READ) as pickled:
        tokenizer: Tokenizer = pickle.loads(pickled)
    os.close(tokenizer_fd)
    memory = mmap.mmap(masks_fd, rows * words * 4)
    os.close(masks_fd)
    masks = np.frombuffer(memory, np.int32).reshape(rows, words)
    worker = MaskWorker(tokenizer, masks)
    worker.warm()
    try:
        connection.send_bytes(ENCODER.encode(MaskWorkerReady(os.getpid())))
    except OSError:  # the engine closed while this worker started: nothing to do
        os._exit(0)
    while True:
        try:
            frame = connection.recv_bytes()
        except (EOFError, OSError):  # the engine closed its end, or died
            break
        reply = worker.serve(REQUEST_DECODER.decode(frame))
        try:
            connection.send_bytes(ENCODER.encode(reply))
        except OSError:  # the engine gave up on this worker, or ended
            break
    worker.close()
    # A compile still running on the compiler's thread need not finish: nothing waits for it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
