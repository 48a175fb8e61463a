"""The engine's own time per decode step, without a GPU: everything `engine.step()` does
except the model's forward pass.

    python scripts/profile_engine_step.py                      # 135M and 8B shapes, 1/64/256
    python scripts/profile_engine_step.py --shapes 135m --forward numpy --batch-sizes 1,8 \
        --prompt-tokens 16 --steps 5
    python scripts/profile_engine_step.py --profile 256        # cProfile of 256-row steps
    python scripts/profile_engine_step.py --shapes 135m --batch-sizes 64 --constrained \
        [--mask-workers N] [--no-jump-forward]                  # JSON-schema sequences

It prints, per batch size, the median over decode steps of the step's wall time less the
excluded (model) time, per step and per sequence, and the part of it spent in
`StepLayout.fill`; then the cost of `TextStream` per token at the start and at the end of a
long stream. The engine runs unchanged over a stand-in backend:

- `--forward device` (default) does on the CPU what the CUDA backend's step does on the host
  (the ForwardBatch written into a `StepLayout` word array at its bucket), and takes the place
  of the graph replay by handing back token ids; the engine samples "on the device" as it does
  with CUDA. The token ids are seeded draws from `--distinct-tokens` ordinary tokens, so the
  detokenizer sees varied tokens. Only that draw is excluded from the step's time.
- `--forward numpy` runs the real NumPy model (the default model's shape only) and subtracts
  the time inside `forward`; the engine's host sampler then counts as engine time. A NumPy
  step takes seconds on a 2-core machine: use small batches and `--prompt-tokens 16`.

Shapes: `135m` is the default model (its config and real tokenizer); `8b` is the Llama-3.1-8B
shape with the synthetic byte-level tokenizer of 128256 placeholder tokens. Only steps where
every sequence is decoding are timed; the noisy 2-core CI machines are best compared as
ratios within one run.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.structured_output import StructuredOutput
from ember.engine.text_stream import TextStream
from ember.model.backend import CompletedStep, ForwardBackend, SampledStep, SamplingBatch
from ember.model.config import ModelConfig
from ember.model.cuda.step_inputs import StepLayout
from ember.model.default_model import resolve_model_path
from ember.model.forward_batch import ForwardBatch
from ember.model.gguf_file import GGUFFile
from ember.model.loader import LoadedModel, load_model
from ember.model.synthetic import preset, synthetic_tokenizer
from ember.model.tokenizer import Tokenizer

F32 = npt.NDArray[np.float32]
_FIRST_ORDINARY_ID = 300  # as the benchmarks: above the special and byte tokens
SCHEMA_BODY = Path(__file__).parent / "bench_data" / "json_schema_body.json"


@dataclass(slots=True)
class Clock:
    """Seconds spent in code that is not the engine's own (the model), and in layout fills."""

    excluded: float = 0.0
    fill: float = 0.0
    fills: list[float] = field(default_factory=list)


def _buckets(limit: int) -> list[int]:
    # The CUDA backend's bucket sizes (cuda_llama.buckets), repeated here so that this script
    # does not import the CUDA backend's module.
    sizes = [b for b in (1 << i for i in range(9)) if b < limit]
    sizes += list(range(512, limit, 256))
    return sorted({*sizes, limit})


class DeviceStandIn:
    """A `DeviceSamplingBackend` whose host side is the CUDA backend's and whose model is a
    seeded draw of token ids."""

    def __init__(
        self,
        config: ModelConfig,
        clock: Clock,
        distinct_tokens: int,
        stop_ids: frozenset[int] = frozenset(),
        seed: int = 0,
    ) -> None:
        self._config = config
        self._stop_ids = np.array(sorted(stop_ids), np.int64)
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        ordinary = np.arange(_FIRST_ORDINARY_ID, config.vocab_size - 1)
        self._vocabulary = (
            self._rng.choice(ordinary, distinct_tokens, replace=False)
            if 0 < distinct_tokens < ordinary.shape[0]
            else ordinary
        )
        self._layout: StepLayout | None = None
        self._words: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self._token_buckets: list[int] = []
        self._row_buckets: list[int] = []

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def device_name(self) -> str:
        return "cpu (device stand-in)"

    def kv_bytes_per_token(self) -> int:
        c = self._config
        return 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        pass

    def default_kv_cache_bytes(self, max_tokens: int) -> int:
        return max_tokens * self.kv_bytes_per_token()

    def default_prefill_tokens_per_step(self) -> int | None:
        return None  # as the CUDA backend's

    def set_batch_invariant(self, on: bool) -> None:
        """Hands back drawn ids, whatever the batch: nothing to choose."""

    def reserve(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int) -> None:
        max_tokens = max(max_num_tokens, max_num_seqs)
        max_rows = min(max_num_seqs, max_tokens)
        self._layout = StepLayout(max_tokens, max_rows, max_num_seqs, max_blocks_per_seq)
        self._words = np.zeros(self._layout.total, np.int32)
        self._token_buckets = _buckets(max_tokens)
        self._row_buckets = _buckets(max_rows)

    def forward(self, batch: ForwardBatch) -> F32:
        raise NotImplementedError("the stand-in samples on the device")

    def launch_sample(self, batch: ForwardBatch, sampling: SamplingBatch) -> CompletedStep:
        self._fill(batch, sampling)
        return self.sample(batch.logits_indices.shape[0], sampling, sampling.masks)

    def launch_forward(self, batch: ForwardBatch, sampling: SamplingBatch) -> AwaitingMasks:
        self._fill(batch, sampling)
        return AwaitingMasks(self, batch.logits_indices.shape[0], sampling)

    def _fill(self, batch: ForwardBatch, sampling: SamplingBatch) -> None:
        assert self._layout is not None
        started = time.perf_counter()
        rows = batch.logits_indices.shape[0]
        tokens_b = self._token_buckets[bisect.bisect_left(self._token_buckets, batch.num_tokens)]
        rows_b = self._row_buckets[bisect.bisect_left(self._row_buckets, max(rows, 1))]
        self._layout.fill(self._words, batch, sampling, tokens_b, min(rows_b, tokens_b))
        filled = time.perf_counter() - started
        self._clock.fill += filled
        self._clock.fills.append(filled)

    def sample(
        self, rows: int, sampling: SamplingBatch, masks: npt.NDArray[np.int32] | None
    ) -> CompletedStep:
        started = time.perf_counter()
        token_ids = self._rng.choice(self._vocabulary, rows).astype(np.int32)
        if masks is not None and sampling.mask_rows is not None:
            self._constrain(token_ids, masks, sampling.mask_rows)
        self._clock.excluded += time.perf_counter() - started
        return CompletedStep(SampledStep(token_ids=token_ids, host_logits=None))

    def _constrain(
        self, token_ids: npt.NDArray[np.int32], masks: npt.NDArray[np.int32], rows: Any
    ) -> None:
        # A constrained row draws among the tokens its mask allows, its stop token only when
        # nothing else is (so that sequences run as long as the grammar lets them).
        for row, m in enumerate(rows.tolist()):
            if m < 0:
                continue
            bits = np.unpackbits(masks[m].view(np.uint8), bitorder="little")
            allowed = np.flatnonzero(bits[: self._config.vocab_size])
            others = allowed[~np.isin(allowed, self._stop_ids)]
            token_ids[row] = self._rng.choice(others if others.shape[0] else allowed)


class AwaitingMasks:
    """The stand-in's step launched before its masks (`DeviceSamplingBackend.launch_forward`)."""

    def __init__(self, backend: DeviceStandIn, rows: int, sampling: SamplingBatch) -> None:
        self._backend = backend
        self._rows = rows
        self._sampling = sampling

    def sample(self, masks: npt.NDArray[np.int32]) -> CompletedStep:
        return self._backend.sample(self._rows, self._sampling, masks)


class TimedForward:
    """The NumPy model, with the time inside `forward` booked as excluded."""

    def __init__(self, inner: ForwardBackend, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def forward(self, batch: ForwardBatch) -> F32:
        started = time.perf_counter()
        try:
            return self._inner.forward(batch)
        finally:
            self._clock.excluded += time.perf_counter() - started


def build_model(shape: str, forward: str, clock: Clock, distinct_tokens: int) -> LoadedModel:
    if forward == "numpy":
        if shape != "135m":
            raise SystemExit("--forward numpy runs the default model's shape (135m) only")
        real = load_model(None, "cpu", show_progress=False)
        timed: Any = TimedForward(real.backend, clock)
        return LoadedModel(real.path, real.config, real.tokenizer, None, timed, 0.0)
    if shape == "135m":
        path = resolve_model_path(None)
        gguf = GGUFFile.open(path)
        config, tokenizer = ModelConfig.from_gguf(gguf), Tokenizer.from_gguf(gguf)
    else:
        path = Path("synthetic:llama-8b-q4_0")
        config = preset(str(path))[0]
        tokenizer = synthetic_tokenizer(config.vocab_size)
    stand_in = DeviceStandIn(config, clock, distinct_tokens, tokenizer.stop_ids)
    return LoadedModel(path, config, tokenizer, None, stand_in, 0.0)


@dataclass(frozen=True, slots=True)
class StepTimes:
    batch: int
    engine_ms: float  # median over steps of (step wall - excluded)
    fill_ms: float  # median StepLayout.fill (part of engine_ms in device mode)
    forward_ms: float  # median excluded time


def run_batch(
    engine: LLMEngine,
    clock: Clock,
    batch: int,
    prompt_tokens: int,
    steps: int,
    profile: Callable[[Callable[[], None]], None] | None,
    structured: StructuredOutput | None = None,
) -> StepTimes:
    rng = np.random.default_rng(batch)
    vocab = engine.model_config.vocab_size
    # The sequences prefilled first decode while the others prefill: none may finish early.
    prefill_steps = -(-batch * prompt_tokens // engine.config.max_num_batched_tokens)
    max_tokens = prefill_steps + steps + 32
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=structured is None, structured=structured
    )
    ids = list(range(batch))
    for request_id in ids:
        prompt = rng.integers(_FIRST_ORDINARY_ID, vocab, prompt_tokens).tolist()
        engine.add_request(request_id, prompt, params)
    started: set[int] = set()
    while len(started) < batch:  # prefill, over as many steps as the token budget needs
        started.update(out.request_id for out in engine.step())
    for _ in range(3):
        engine.step()
    engine_s, fill_s, forward_s = [], [], []
    for _ in range(steps):
        clock.excluded = clock.fill = 0.0
        begun = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - begun
        engine_s.append(wall - clock.excluded)
        fill_s.append(clock.fill)
        forward_s.append(clock.excluded)
    if profile is not None:

        def some_steps() -> None:
            for _ in range(min(steps, 20)):
                engine.step()

        profile(some_steps)
    for request_id in ids:
        engine.abort(request_id)
    return StepTimes(
        batch,
        1e3 * float(np.median(engine_s)),
        1e3 * float(np.median(fill_s)),
        1e3 * float(np.median(forward_s)),
    )


def print_profile(run: Callable[[], None]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def text_stream_rates(
    tokenizer: Tokenizer, vocab: int, tokens: int, distinct_tokens: int
) -> tuple[float, float]:
    """Microseconds per pushed token over the first and the last 1024 of `tokens` tokens."""
    rng = np.random.default_rng(0)
    ordinary = np.arange(_FIRST_ORDINARY_ID, vocab - 1)
    if 0 < distinct_tokens < ordinary.shape[0]:
        ordinary = rng.choice(ordinary, distinct_tokens, replace=False)
    ids = rng.choice(ordinary, tokens).tolist()
    stream = TextStream(tokenizer, SamplingParams(max_tokens=tokens, stop=("\n\n\n###",)))
    marks = [0.0] * (tokens + 1)
    begun = time.perf_counter()
    for i, token_id in enumerate(ids):
        stream.push(token_id)
        stream.take_delta(final=False)
        marks[i + 1] = time.perf_counter() - begun
    window = min(1024, tokens)
    first = (marks[window] - marks[0]) / window
    last = (marks[tokens] - marks[tokens - window]) / window
    return 1e6 * first, 1e6 * last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="135m,8b")
    parser.add_argument("--forward", choices=("device", "numpy"), default="device")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile", type=int, default=0, help="cProfile steps of this batch")
    parser.add_argument("--stream-tokens", type=int, default=8192)
    parser.add_argument(
        "--distinct-tokens",
        type=int,
        default=4096,
        help="the stand-in model's output vocabulary (0: all of it, so that most tokens are "
        "new to the detokenizer's cache; real text reuses a few thousand)",
    )
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="every sequence constrained by the structured-output benchmark's JSON schema "
        "(the stand-in draws among the tokens its mask allows)",
    )
    parser.add_argument(
        "--mask-workers",
        type=int,
        default=None,
        help="with --constrained: mask worker processes (default: the engine's; 0: none)",
    )
    parser.add_argument(
        "--no-jump-forward",
        action="store_true",
        help="with --constrained: sample every token, forced ones too",
    )
    args = parser.parse_args()
    structured = None
    if args.constrained:
        body = json.loads(SCHEMA_BODY.read_text())
        structured = StructuredOutput.json_schema(body["response_format"]["json_schema"]["schema"])
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for shape in args.shapes.split(","):
        clock = Clock()
        model = build_model(shape, args.forward, clock, args.distinct_tokens)
        blocks_per_seq = -(-(args.prompt_tokens + args.steps + 100) // 16)
        engine = LLMEngine(
            EngineConfig(
                max_num_seqs=max(batches),
                num_kv_blocks=max(batches) * blocks_per_seq + 64,
                show_progress=False,
                mask_workers=args.mask_workers,
                jump_forward=not args.no_jump_forward,
            ),
            model=model,
        )
        workers = engine.mask_workers
        if structured is not None and workers is not None and not workers.wait_ready(60):
            raise SystemExit("the mask workers did not start within 60 s")
        print(f"\n{shape}: vocab {model.config.vocab_size}, forward {args.forward}")
        print(f"{'batch':>5} {'engine ms/step':>15} {'us/seq':>7} {'fill ms':>8} {'model ms':>9}")
        for batch in batches:
            profile = print_profile if batch == args.profile else None
            t = run_batch(engine, clock, batch, args.prompt_tokens, args.steps, profile, structured)
            print(
                f"{t.batch:>5} {t.engine_ms:>15.3f} {1e3 * t.engine_ms / batch:>7.1f} "
                f"{t.fill_ms:>8.3f} {t.forward_ms:>9.3f}"
            )
        if args.stream_tokens:
            first, last = text_stream_rates(
                model.tokenizer, model.config.vocab_size, args.stream_tokens, args.distinct_tokens
            )
            print(
                f"TextStream push+take_delta: {first:.2f} us/token over the first 1024 tokens, "
                f"{last:.2f} over the last 1024 of {args.stream_tokens}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
