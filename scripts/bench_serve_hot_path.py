"""The server's per-token work, alone: how many tokens/s one server process can route.

Feeds step reports (as the engine worker sends them: one per step, one token per running
sequence) into the real `EngineClient`, with one streaming consumer task per sequence doing
what an SSE response does per wake-up (take the delta, encode the chunk). Everything but the
socket writes: each report is encoded into its wire frame and decoded as the worker and the
server do, then detokenization, stop-string checks, metrics, waking handlers, JSON chunks. The
token ids come from real text, so detokenization sees realistic pieces.

    python scripts/bench_serve_hot_path.py --sequences 256 --steps 200
"""

from __future__ import annotations

import argparse
import asyncio
import time

from ember.engine.config import EngineConfig
from ember.engine.engine_stats import EngineStats
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.engine.sequence_limits import SequenceLimits
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.generation import GenerationRequest
from ember.serve.metrics import ServerMetrics
from ember.serve.openai_responses import ChunkEncoder, ResponseIdentity
from ember.serve.served_model import ServedModel
from ember.serve.system_fingerprint import system_fingerprint
from ember.serve.worker_protocol import (
    FRAME_HEADER,
    RequestDelta,
    ServerMessage,
    StepReport,
    WorkerReady,
    decode_worker_message,
    encode_frame,
)

TEXT = (
    "The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his "
    "father had, and lit the lamp that swept the dark water for ships he would never meet. "
) * 20


class DiscardingLink:
    def send(self, message: ServerMessage) -> None:
        pass


async def run(sequences: int, steps: int, stop: tuple[str, ...]) -> float:
    model = ServedModel.load(None)
    metrics = ServerMetrics(model.name, model.context_length)
    config = ServerConfig(engine=EngineConfig(max_num_seqs=sequences), request_timeout=None)
    client = EngineClient(config, metrics)
    limits = SequenceLimits(model.tokenizer.vocab_size, model.context_length, 100_000, 16)
    client.attach(DiscardingLink(), WorkerReady(0, "none", limits, 0.0))
    tokens = model.tokenizer.encode(TEXT)
    params = SamplingParams(max_tokens=steps, stop=stop)
    requests = []
    for i in range(sequences):
        request = GenerationRequest(f"r{i}", None)
        request.add_choice([1, 2, 3], params, model.tokenizer)
        client.submit(request)
        requests.append(request)
    identity = ResponseIdentity.new("cmpl", model.name, system_fingerprint(model.path))
    encoder = ChunkEncoder(identity, model.tokenizer, False, False)
    sent_bytes = 0

    async def consume(request: GenerationRequest) -> None:
        nonlocal sent_bytes
        choice = request.choices[0]
        while not request.finished:
            await request.wait()
            delta = choice.take()
            if delta is not None:
                sent_bytes += len(encoder.delta(choice, delta))

    consumers = [asyncio.create_task(consume(r)) for r in requests]
    stats = EngineStats(sequences, 0, 0.5, 1000, 0, 0, 0, sequences, sequences)
    request_ids = [r.choices[0].request_id for r in requests]
    started = time.perf_counter()
    for step in range(steps):
        token = tokens[step % len(tokens)]
        finish = FinishReason.LENGTH if step == steps - 1 else None
        deltas: list[RequestDelta] = [
            (request_id, [token], None, finish) for request_id in request_ids
        ]
        frame = encode_frame(StepReport(deltas, request_ids if step == 0 else [], stats))
        client.on_message(decode_worker_message(frame[FRAME_HEADER.size :]))
        await asyncio.sleep(0)  # let the consumers run, as the event loop would between reads
    await asyncio.gather(*consumers)
    elapsed = time.perf_counter() - started
    assert sent_bytes > 0
    return sequences * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for stop in ((), ("\n\n", "THE END")):
        rate = asyncio.run(run(args.sequences, args.steps, stop))
        print(f"{args.sequences} streams, stop strings {list(stop)}: {rate:,.0f} tokens/s")
    print(f"reference: a 1M-iteration Python loop took {python_loop_ms():.0f} ms here now")


def python_loop_ms() -> float:
    """How fast this machine runs plain Python right now (noisy VMs vary many-fold)."""
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
