"""The engine loop: requests in, one scheduled and executed batch per step, outputs out."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as SequenceOf
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ember.engine.config import EngineConfig
from ember.engine.engine_stats import EngineStats
from ember.engine.forced_tokens import force, take
from ember.engine.grammar import GrammarCompiler, mask_threads
from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.mask_workers import MaskWorkers, mask_worker_count
from ember.engine.model_runner import LaunchedStep, ModelRunner
from ember.engine.request_output import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from ember.engine.scheduling import Scheduling
from ember.engine.sequence import (
    EQUAL_SCHEDULING,
    FinishReason,
    RequestId,
    Sequence,
    SequenceStatus,
    TokenLogprob,
)
from ember.engine.sequence_limits import SequenceLimits
from ember.engine.stop_checker import StopChecker
from ember.errors import InvalidRequestError, StructuredOutputError
from ember.model.loader import LoadedModel, load_model

if TYPE_CHECKING:
    from llguidance import LLMatcher

log = logging.getLogger(__name__)

# A step with nothing to run but grammars compiling waits this long for one, rather than spin.
_COMPILE_WAIT_SECONDS = 0.005


@dataclass(slots=True, eq=False)
class _Request:
    seq: Sequence
    stop: StopChecker
    pending_tokens: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Its grammar on the compiler's thread; it is scheduled once that is done.
    compiling: Future[LLMatcher] | None = None


class LLMEngine:
    def __init__(self, config: EngineConfig, model: LoadedModel | None = None) -> None:
        begun = time.monotonic()
        self.config = config
        self.model = model or load_model(config.model, config.device, config.show_progress)
        self.model_config = self.model.config
        self.tokenizer = self.model.tokenizer
        backend = self.model.backend
        backend.set_batch_invariant(config.batch_invariant)
        context = self.model_config.context_length
        kv_bytes = config.kv_cache_memory_bytes or backend.default_kv_cache_bytes(
            config.max_num_seqs * context
        )
        num_blocks = config.num_kv_blocks or max(
            1, kv_bytes // (backend.kv_bytes_per_token() * config.block_size)
        )
        backend.allocate_kv_cache(num_blocks, config.block_size)
        backend.reserve(
            config.max_num_batched_tokens,
            config.max_num_seqs,
            -(-context // config.block_size),
        )
        self.pool = KVCachePool(num_blocks, config.block_size, config.enable_prefix_caching)
        self.limits = SequenceLimits(
            self.model_config.vocab_size, context, num_blocks, config.block_size
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                config.max_num_seqs,
                config.max_num_batched_tokens,
                min(
                    config.max_num_batched_tokens,
                    config.max_prefill_tokens_per_step
                    or backend.default_prefill_tokens_per_step()
                    or config.max_num_batched_tokens,
                ),
                config.starvation_steps,
            ),
            self.pool,
        )
        # Structured outputs' grammars, compiled against this model's tokenizer, and a step's
        # token masks: computed by worker processes beside the engine's own thread, or (one
        # CPU, or none asked for) by threads of this process.
        workers = mask_worker_count() if config.mask_workers is None else config.mask_workers
        self.grammars = GrammarCompiler(
            self.tokenizer,
            self.model_config.vocab_size,
            lexer_groups=1 if workers else mask_threads(),
            threads=1 if workers else None,
        )
        self.mask_workers = (
            MaskWorkers(self.grammars, self.tokenizer, workers, config.max_num_seqs)
            if workers
            else None
        )
        self.runner = ModelRunner(
            backend, config.block_size, self.pool.tables, self.grammars, self.mask_workers
        )
        self._asynchronous = config.async_scheduling and self.runner.device_sampling is not None
        # The launched step whose tokens the next `step()` collects (asynchronous scheduling).
        self._in_flight: LaunchedStep | None = None
        # The step launched ahead, by the call before, whose masks the next `step()` computes
        # (a constrained step's forward pass: `_launch_ahead`).
        self._ahead: LaunchedStep | None = None
        self._requests: dict[RequestId, _Request] = {}
        # Requests the last `step()` admitted into the running batch (the scheduler's word).
        self.admitted: list[RequestId] = []
        # Requests the last `step()` refused after `add_request` took them (a grammar that did
        # not compile); they are gone from the engine.
        self.rejected: list[tuple[RequestId, InvalidRequestError]] = []
        self._compiling: list[_Request] = []
        self._next_seq_id = 0
        self._seed_rng = np.random.default_rng(config.seed)
        self._last_batch_size = 0
        self._last_batch_tokens = 0
        # The construction's seconds: model, weights, KV cache (a worker's ready log says it).
        self.load_seconds = time.monotonic() - begun

    def encode_prompt(self, prompt: str | SequenceOf[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = [int(t) for t in prompt]
        self.limits.check_prompt_ids(ids)
        return ids

    def add_request(
        self,
        request_id: RequestId,
        prompt: str | SequenceOf[int],
        params: SamplingParams,
        cache_salt: str | None = None,
        scheduling: Scheduling | None = None,
    ) -> list[int]:
        """Queue a request; returns its prompt token ids. Raises on requests that cannot run.
        `cache_salt`: it reuses cached prefix blocks only of requests with the same salt.
        `scheduling`: its priority and tenant's share (None: all requests equal, first come
        first served)."""
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        prompt_ids = self.encode_prompt(prompt)
        self.limits.max_tokens_for(len(prompt_ids), params.max_tokens)
        seed = params.seed if params.seed is not None else int(self._seed_rng.integers(2**63))
        seq = Sequence(
            seq_id=self._next_seq_id,
            request_id=request_id,
            token_ids=prompt_ids,
            num_prompt_tokens=len(prompt_ids),
            params=params,
            rng=np.random.default_rng(seed),
            arrival_time=time.monotonic(),
            seed=seed,
            cache_salt=cache_salt,
            scheduling=EQUAL_SCHEDULING if scheduling is None else scheduling,
        )
        self._next_seq_id += 1
        stop = StopChecker(params, self.tokenizer, with_text=self.config.detokenize)
        request = _Request(seq, stop)
        self._requests[request_id] = request
        if params.structured is None:
            self.scheduler.add(seq)
        else:
            if self.mask_workers is not None:  # started by the first request that needs them
                self.mask_workers.start()
            request.compiling = self.grammars.submit(params.structured)
            self._compiling.append(request)
            self._schedule_compiled()
        return list(prompt_ids)

    def _schedule_compiled(self) -> None:
        """Requests whose grammar is compiled go to the scheduler, in the order they came;
        those whose grammar failed are rejected."""
        still: list[_Request] = []
        for request in self._compiling:
            future = request.compiling
            assert future is not None
            if not future.done():
                still.append(request)
                continue
            request.compiling = None
            try:
                request.seq.grammar = future.result()
            except StructuredOutputError as error:
                del self._requests[request.seq.request_id]
                self.rejected.append((request.seq.request_id, error))
                continue
            self.scheduler.add(request.seq)
        self._compiling = still

    def abort(self, request_id: RequestId) -> bool:
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request.compiling is not None:
            self._compiling.remove(request)
        else:
            self._finish(request.seq, FinishReason.ABORT)
        return True

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.scheduler.finish(seq, reason)
        if seq.grammar is not None and self.mask_workers is not None:
            self.mask_workers.release(seq)

    def close(self) -> None:
        """End the engine's helper processes and threads (mask workers, the grammar compiler's
        thread); the engine takes no more steps."""
        if self.mask_workers is not None:
            self.mask_workers.close()
        self.grammars.close()

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def step(self) -> list[RequestOutput]:
        """Schedule and launch a step; return what requests have to report.

        Asynchronously, a step's tokens are collected by the next call, after that call has
        launched its own step: a sequence still decoding takes its next input from the device,
        and its output reaches the caller one call later (no step is lost: the device computes
        while the host collects). A request that finishes on a stop token was scheduled once
        more meanwhile; that token is dropped (max_tokens is known ahead and wastes nothing).
        A constrained sequence overlaps steps too: its step is launched before its previous
        token is known, and its mask is computed once that token is collected, while the device
        runs the step's forward pass (`ModelRunner.sample_constrained`). Such a step's sampling
        is queued only then, so the call launches the next step's forward pass before it
        returns (`_launch_ahead`): the device runs it while the caller handles the outputs and
        the next call collects and computes masks, rather than idling until that call.
        """
        previous, self._in_flight = self._in_flight, None
        launched, self._ahead = self._ahead, None
        self.rejected = []
        self.admitted = []
        outputs: list[RequestOutput] = []
        if launched is None:
            if self._compiling:
                if previous is None and not self.scheduler.num_unfinished:
                    futures = [request.compiling for request in self._compiling]
                    wait_for_futures(futures, _COMPILE_WAIT_SECONDS, "FIRST_COMPLETED")  # type: ignore[arg-type]
                self._schedule_compiled()
            batch = self.scheduler.schedule()
            if not batch.seqs and previous is not None and self.scheduler.running:
                # Every running sequence waits for the step in flight (its last token is there):
                # take that step's tokens now and launch the next step in this call, rather
                # than return with the device idle until the next call.
                outputs, previous = self._collect(previous), None
                batch = self.scheduler.schedule()
            launched = self._launch(batch)
        if previous is not None:
            outputs = self._collect(previous, launched)
        if launched is not None:
            constrained = launched.awaiting_masks is not None
            if constrained:  # its masks needed `previous`'s tokens
                self.runner.sample_constrained(launched)
            self._mark_computed(launched)
            if launched.asynchronous:
                self._in_flight = launched
                if constrained:
                    self._ahead = self._launch_ahead()
            else:
                outputs += self._collect(launched)
        return outputs

    def _launch(self, batch: ScheduledBatch) -> LaunchedStep | None:
        """Launch a scheduled batch (None for an empty one); the call reports its admissions."""
        self.admitted += [seq.request_id for seq in batch.admitted]
        self._last_batch_size = len(batch)
        self._last_batch_tokens = batch.num_tokens
        return self.runner.launch(batch, self._asynchronous) if batch.seqs else None

    def _launch_ahead(self) -> LaunchedStep | None:
        """The next step, scheduled and launched now (its constrained rows' sampling waits for
        the next call's masks): as the next call would schedule it, with the step just sampled
        in flight, except that requests added meanwhile join one step later."""
        if self._compiling:
            self._schedule_compiled()
        batch = self.scheduler.schedule()
        return self._launch(batch) if batch.seqs else None

    def _mark_computed(self, step: LaunchedStep) -> None:
        """The step's K/V count as computed once its inputs are known on the host (its pending
        inputs arrive with the previous step's collection): the scheduler's next decision and
        the prefix cache's block hashes need them. Finished and aborted sequences are gone."""
        seqs, counts = step.batch.seqs, step.batch.num_new_tokens
        if any(seq.status is not SequenceStatus.RUNNING for seq in seqs):
            live = [i for i, seq in enumerate(seqs) if seq.status is SequenceStatus.RUNNING]
            seqs, counts = [seqs[i] for i in live], [counts[i] for i in live]
        self.pool.mark_computed(seqs, counts)

    def _collect(
        self, step: LaunchedStep, following: LaunchedStep | None = None
    ) -> list[RequestOutput]:
        """Take the step's tokens, and the tokens constrained sequences' grammars force after
        them. `following`: the step launched after it and not collected yet, whose rows of
        sequences that take forced tokens now are dropped."""
        sampled = self.runner.collect(step)
        requests = self._requests
        logprobs = sampled.logprobs or [None] * len(sampled)
        live: list[tuple[_Request, int, TokenLogprob | None, bool, int]] = []
        asks: list[tuple[Sequence, int, int]] = []
        for seq, token_id, logprob in zip(sampled.seqs, sampled.token_ids, logprobs, strict=True):
            request = requests.get(seq.request_id)
            if request is None or request.seq is not seq:  # finished or aborted since
                continue
            grammar = seq.grammar
            if grammar is None:
                live.append((request, token_id, logprob, False, 0))
                continue
            complete = take(grammar, token_id)
            room = 0 if complete else self._forced_room(seq)
            live.append((request, token_id, logprob, complete, room))
            asks.append((seq, token_id, room))
        workers = self.mask_workers
        # Their next masks (and forced tokens) are computed meanwhile (`MaskWorkers.ask`): the
        # next step that runs them waits for nothing else of theirs.
        asked: set[int] = workers.ask(asks) if asks and workers is not None else set()
        outputs: list[RequestOutput] = []
        # Outputs of sequences whose grammar may force tokens now, and the room for them.
        forcing: list[tuple[_Request, RequestOutput, int]] = []
        for request, token_id, logprob, complete, room in live:
            output = self._advance(request, token_id, logprob, complete)
            outputs.append(output)
            if room and not output.finished:
                forcing.append((request, output, room))
        if forcing:
            self._take_forced(forcing, asked, following)
        return outputs

    def _forced_room(self, seq: Sequence) -> int:
        """How many forced tokens a constrained sequence may take after its token now being
        collected: none after its last token, nor where each token needs its logprob entry."""
        if not self.config.jump_forward or seq.params.logprobs is not None:
            return 0
        return seq.params.max_tokens - seq.num_output_tokens - 1

    def _take_forced(
        self,
        forcing: list[tuple[_Request, RequestOutput, int]],
        asked: set[int],
        following: LaunchedStep | None,
    ) -> None:
        """The tokens the grammars force after this collection's tokens, into their sequences
        and into the outputs `_advance` made of it (with each one's room): those the mask
        workers' mirrors took (`asked`: the sequences whose worker was asked), else found on the
        engine's thread, as without workers."""
        workers = self.mask_workers
        found: dict[int, list[int]] = {}
        if workers is not None and any(request.seq.seq_id in asked for request, _, _ in forcing):
            found = workers.take_forced()
        for request, output, room in forcing:
            seq = request.seq
            grammar = seq.grammar
            assert grammar is not None
            forced = found.get(seq.seq_id)
            if forced is None:  # no mirror found them (none asked, or none answered)
                forced = force(grammar, room)
            elif forced:
                taken = grammar.try_consume_tokens(forced)
                if taken < len(forced):  # the same grammar as its mirror's: never expected
                    assert workers is not None
                    log.error(
                        "sequence %d's grammar refused the tokens its mask worker forced (%d "
                        "of %d taken); its mirror is made again",
                        seq.seq_id,
                        taken,
                        len(forced),
                    )
                    workers.release(seq)
                    forced = forced[:taken]
            if forced:
                self._extend(request, output, forced, following)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_usage=self.pool.usage,
            num_kv_blocks=self.pool.num_blocks,
            prefix_cache_queries=self.pool.stats.queries,
            prefix_cache_hits=self.pool.stats.hits,
            num_preemptions=self.scheduler.num_preemptions,
            last_batch_size=self._last_batch_size,
            last_batch_tokens=self._last_batch_tokens,
            running_by_priority=self.scheduler.running_by_priority(),
            waiting_by_priority=self.scheduler.waiting.counts_by_priority(),
            num_urgent_steps=self.scheduler.num_urgent_steps,
        )

    def _advance(
        self,
        request: _Request,
        token_id: int,
        logprob: TokenLogprob | None,
        complete: bool,
    ) -> RequestOutput:
        """Add a sampled token to its request (a `complete` grammar ends it); what the request
        has to report."""
        seq = request.seq
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
        seq.append_token(token_id)
        request.pending_tokens.append(token_id)
        if logprob is not None:
            request.pending_logprobs.append(logprob)
        finish = request.stop.accept(token_id)
        if finish is None and complete:
            finish = FinishReason.STOP
        text = request.stop.text
        if finish is not None:
            self._finish(seq, finish)
            del self._requests[seq.request_id]
        output = RequestOutput(
            seq.request_id,
            request.pending_tokens,
            "" if text is None else text.take_delta(final=finish is not None),
            request.pending_logprobs,
            finish is not None,
            finish,
            seq.num_prompt_tokens,
            seq.num_cached_prompt_tokens,
            len(seq.token_ids) - seq.num_prompt_tokens,
        )
        request.pending_tokens, request.pending_logprobs = [], []
        return output

    def _extend(
        self,
        request: _Request,
        output: RequestOutput,
        forced: list[int],
        following: LaunchedStep | None,
    ) -> None:
        """Add tokens the grammar forced (and has taken) to the request, up to one that ends
        it, and to the output `_advance` made of its sampled token, not yet returned."""
        seq = request.seq
        assert seq.grammar is not None
        if following is not None:
            following.drop(seq)  # its row there samples what the grammar forced
        stop = request.stop
        finish = None
        for token_id in forced:
            seq.append_token(token_id)
            output.new_token_ids.append(token_id)
            finish = stop.accept(token_id)
            if finish is not None:
                break
        if finish is None and seq.grammar.is_stopped():
            finish = FinishReason.STOP
        if stop.text is not None:
            output.new_text += stop.text.take_delta(final=finish is not None)
        output.num_output_tokens = len(seq.token_ids) - seq.num_prompt_tokens
        if finish is not None:
            self._finish(seq, finish)
            del self._requests[seq.request_id]
            output.finished, output.finish_reason = True, finish
