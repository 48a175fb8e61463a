"""The offline Python API, in the spirit of vLLM's `LLM`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any, cast

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason, RequestId, TokenLogprob
from ember.errors import InvalidRequestError
from ember.model.tokenizer import Tokenizer

Prompt = str | SequenceOf[int]
Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Completion:
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]  # generated tokens only
    finish_reason: str
    logprobs: list[TokenLogprob] | None
    num_cached_prompt_tokens: int


class LLM:
    """`LLM()` loads the default model on the CPU; `LLM(model=path, device=...)` any GGUF."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        *,
        engine: LLMEngine | None = None,
        **engine_options: Any,
    ) -> None:
        self.engine = engine or LLMEngine(
            EngineConfig(model=model, device=device, **engine_options)
        )
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | SequenceOf[Prompt],
        params: SamplingParams | SequenceOf[SamplingParams] | None = None,
    ) -> list[Completion]:
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(params, len(prompt_list))
        request_ids: list[RequestId] = []
        prompt_ids: dict[RequestId, list[int]] = {}
        try:
            for prompt, p in zip(prompt_list, params_list, strict=True):
                request_id = next(self._ids)
                prompt_ids[request_id] = self.engine.add_request(request_id, prompt, p)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        results = self._collect(request_ids, prompt_ids, params_list)
        return [results[request_id] for request_id in request_ids]

    def chat(
        self,
        messages: SequenceOf[Message] | SequenceOf[SequenceOf[Message]],
        params: SamplingParams | SequenceOf[SamplingParams] | None = None,
    ) -> list[Completion]:
        """One completion per conversation (a single conversation is a list of messages)."""
        conversations = (
            [cast("SequenceOf[Message]", messages)]
            if messages and isinstance(messages[0], Mapping)
            else cast("SequenceOf[SequenceOf[Message]]", messages)
        )
        return self.generate([self.render_chat(c) for c in conversations], params)

    def render_chat(self, messages: SequenceOf[Message]) -> list[int]:
        template = self.engine.model.chat_template
        if template is None:
            raise InvalidRequestError("this model has no chat template; use generate()")
        return template.encode(messages, self.tokenizer, add_generation_prompt=True)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text deltas as they are generated."""
        request_id = next(self._ids)
        self.engine.add_request(request_id, prompt, params or SamplingParams())
        finished = False
        try:
            while not finished:
                outputs = self.engine.step()
                self._raise_rejected({request_id})
                for output in outputs:
                    if output.request_id != request_id:
                        continue
                    if output.new_text:
                        yield output.new_text
                    finished = output.finished
        finally:
            if not finished:
                self.engine.abort(request_id)

    def _raise_rejected(self, wanted: set[RequestId]) -> None:
        """The engine's refusal of one of `wanted` (its grammar did not compile), raised here;
        the others of `wanted` are aborted."""
        for request_id, error in self.engine.rejected:
            if request_id in wanted:
                for other in wanted - {request_id}:
                    self.engine.abort(other)
                raise error

    def _collect(
        self,
        request_ids: list[RequestId],
        prompt_ids: dict[RequestId, list[int]],
        params_list: SequenceOf[SamplingParams],
    ) -> dict[RequestId, Completion]:
        wanted = set(request_ids)
        texts: dict[RequestId, list[str]] = {r: [] for r in request_ids}
        tokens: dict[RequestId, list[int]] = {r: [] for r in request_ids}
        logprobs: dict[RequestId, list[TokenLogprob]] = {r: [] for r in request_ids}
        results: dict[RequestId, Completion] = {}
        while len(results) < len(request_ids):
            outputs = self.engine.step()
            self._raise_rejected(wanted)
            for out in outputs:
                if out.request_id not in wanted:
                    continue
                texts[out.request_id].append(out.new_text)
                tokens[out.request_id].extend(out.new_token_ids)
                logprobs[out.request_id].extend(out.new_logprobs)
                if out.finished:
                    index = request_ids.index(out.request_id)
                    results[out.request_id] = Completion(
                        prompt_token_ids=prompt_ids[out.request_id],
                        text="".join(texts[out.request_id]),
                        token_ids=tokens[out.request_id],
                        finish_reason=(out.finish_reason or FinishReason.STOP).value,
                        logprobs=(
                            logprobs[out.request_id]
                            if params_list[index].logprobs is not None
                            else None
                        ),
                        num_cached_prompt_tokens=out.num_cached_prompt_tokens,
                    )
        return results


def _as_prompt_list(prompts: Prompt | SequenceOf[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # type: ignore[list-item]
    return items  # type: ignore[return-value]


def _as_params_list(
    params: SamplingParams | SequenceOf[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    params_list = list(params)
    if len(params_list) != count:
        raise InvalidRequestError(f"got {len(params_list)} SamplingParams for {count} prompts")
    return params_list


__all__ = ["LLM", "Completion"]
