"""`/v1/chat/completions`, `/v1/completions` and `/v1/models`.

A generation request goes: body -> typed request (400s) -> the model, among the tenant's (404)
-> prompt token ids (chat template, tokenizer) -> context check (400 stating the numbers) ->
the tenant's limits (429: its request and tokens reserved) -> engine client (429/503) -> either
one JSON response or, once the engine has started it, a stream of SSE chunks. A client that
disconnects, or a deadline that passes, aborts the request's sequences in the engine; however
it ends, the tokens it did not use go back to its tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.errors import InvalidRequestError, PromptTooLongError
from ember.serve.api_errors import (
    APIError,
    BadRequestError,
    ClientClosedRequestError,
    ContextLengthExceededError,
    NotFoundError,
    quoted,
)
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.event_stream import EventStreamResponse, disconnect_watch
from ember.serve.generation import GenerationRequest
from ember.serve.http_body import read_body
from ember.serve.metrics import TenantMetrics
from ember.serve.openai_requests import (
    GenerationOptions,
    parse_chat_request,
    parse_completion_request,
)
from ember.serve.openai_responses import (
    DONE,
    ChunkEncoder,
    ResponseIdentity,
    chat_completion_body,
    completion_body,
    error_event,
)
from ember.serve.rate_limits import RateLimiter
from ember.serve.served_model import ServedModel
from ember.serve.tenant_gate import tenant_of
from ember.serve.tenants import Tenant

# Bodies larger than this (bytes) are parsed, rendered and tokenized off the event loop.
_OFFLOAD_BYTES = 16_384

T = TypeVar("T")


class OpenAIRoutes:
    def __init__(
        self,
        config: ServerConfig,
        model: ServedModel,
        client: EngineClient,
        limiter: RateLimiter,
        metrics: TenantMetrics,
    ) -> None:
        self._config = config
        self._model = model
        self._client = client
        self._limiter = limiter
        self._metrics = metrics

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]

    async def models(self, request: Request) -> Response:
        model = self._model
        card = {"id": model.name, "object": "model", "created": model.created, "owned_by": "ember"}
        cards = [card] if tenant_of(request.scope).allows_model(model.name) else []
        return JSONResponse({"object": "list", "data": cards})

    async def chat_completions(self, request: Request) -> Response:
        body = await read_body(request, self._config.max_body_bytes, self._config.read_timeout)
        # A large body is parsed, rendered and tokenized off the loop: its size bounds the
        # text and the count of messages (110,000 empty ones take seconds to render).
        offload = len(body) > _OFFLOAD_BYTES
        max_choices = self._config.max_choices
        chat = await _run_user_work(lambda: parse_chat_request(body, max_choices), offload)
        tenant = tenant_of(request.scope)
        self._check_model(chat.model, tenant)
        template = self._model.chat_template
        if template is None:
            raise BadRequestError(
                "this model has no chat template; use /v1/completions", param="messages"
            )
        tokenizer = self._model.tokenizer

        def render() -> list[int]:
            return template.encode(chat.messages, tokenizer, add_generation_prompt=True)

        prompt_ids = await _run_user_work(render, offload=offload)
        identity = ResponseIdentity.new("chatcmpl", self._model.name)
        generation = self._start(identity, [prompt_ids], chat.options, "messages", tenant)
        if chat.options.stream:
            await self._wait(request, generation, until_started=True)
            encoder = ChunkEncoder(identity, tokenizer, True, chat.options.include_usage)
            return self._stream(generation, encoder, chat.options, None)
        await self._wait(request, generation)
        return JSONResponse(chat_completion_body(identity, generation, tokenizer))

    async def completions(self, request: Request) -> Response:
        body = await read_body(request, self._config.max_body_bytes, self._config.read_timeout)
        offload = len(body) > _OFFLOAD_BYTES
        max_choices = self._config.max_choices
        completion = await _run_user_work(
            lambda: parse_completion_request(body, max_choices), offload
        )
        tenant = tenant_of(request.scope)
        self._check_model(completion.model, tenant)
        tokenizer = self._model.tokenizer
        texts = [p for p in completion.prompts if isinstance(p, str)]

        def encode() -> list[list[int]]:
            if len(texts) == 1:  # the common case: no batch dispatch to the tokenizer's pool
                batch = [tokenizer.encode(texts[0], add_special_tokens=True)]
            else:
                batch = tokenizer.encode_batch(texts, add_special_tokens=True) if texts else []
            encoded = iter(batch)
            return [next(encoded) if isinstance(p, str) else p for p in completion.prompts]

        prompt_ids = await _run_user_work(encode, offload=offload)
        echo: list[str] | None = None
        if completion.echo:
            prompts = [p if isinstance(p, str) else tokenizer.decode(p) for p in completion.prompts]
            echo = [prompt for prompt in prompts for _ in range(completion.options.n)]
        identity = ResponseIdentity.new("cmpl", self._model.name)
        generation = self._start(identity, prompt_ids, completion.options, "prompt", tenant)
        if completion.options.stream:
            await self._wait(request, generation, until_started=True)
            encoder = ChunkEncoder(identity, tokenizer, False, completion.options.include_usage)
            return self._stream(generation, encoder, completion.options, echo)
        await self._wait(request, generation)
        return JSONResponse(completion_body(identity, generation, tokenizer, echo))

    def _check_model(self, name: str, tenant: Tenant) -> None:
        if name != self._model.name:
            raise NotFoundError(
                f"the model {quoted(name)} does not exist; this server serves "
                f"{quoted(self._model.name)}",
                param="model",
                code="model_not_found",
            )
        if not tenant.allows_model(name):
            raise NotFoundError(
                f"the model {quoted(name)} does not exist or your key may not use it",
                param="model",
                code="model_not_found",
            )

    def _start(
        self,
        identity: ResponseIdentity,
        prompts: Sequence[list[int]],
        options: GenerationOptions,
        prompt_param: str,
        tenant: Tenant,
    ) -> GenerationRequest:
        deadlines = [t for t in (self._config.request_timeout, options.timeout) if t is not None]
        generation = GenerationRequest(
            identity.id, min(deadlines) if deadlines else None, options.cache_salt
        )
        generation.wake_on_tokens = options.stream
        limits = self._client.limits
        most_tokens = 0  # what the request can use at most: reserved from the tenant's tokens
        for prompt_ids in prompts:
            try:
                limits.check_prompt_ids(prompt_ids)
                max_tokens = limits.max_tokens_for(len(prompt_ids), options.max_tokens)
            except InvalidRequestError as error:
                raise _refusal(error, prompt_param) from None
            most_tokens += options.n * (len(prompt_ids) + max_tokens)
            for choice in range(options.n):
                generation.add_choice(
                    prompt_ids, options.params_for(max_tokens, choice), self._model.tokenizer
                )
        service_class = tenant.service_class
        generation.scheduling = tenant.scheduling(options.priority)
        generation.service_class = service_class
        generation.series = self._metrics.series(tenant.name, service_class.name)
        reservation = self._limiter.admit(tenant, most_tokens)
        generation.on_settled = lambda request: reservation.settle(request.used_tokens)
        try:
            self._client.submit(generation)
        except APIError:
            reservation.cancel()
            raise
        return generation

    def _disconnected(self, generation: GenerationRequest) -> None:
        self._client.abort(generation)
        generation.fail(ClientClosedRequestError("the client closed the connection"))

    async def _wait(
        self, request: Request, generation: GenerationRequest, until_started: bool = False
    ) -> None:
        """Until the request finishes, or (`until_started`) the engine starts it: a stream's
        answer waits for that, so a request shed or timed out in the queue is a 503, not a
        200 with an error event."""
        async with disconnect_watch(request, lambda: self._disconnected(generation)):
            try:
                while not (generation.finished or (until_started and generation.admitted)):
                    await generation.wait()
            except BaseException:
                if not generation.finished:
                    self._client.abort(generation)
                raise
        if generation.error is not None:
            raise generation.error

    def _stream(
        self,
        generation: GenerationRequest,
        encoder: ChunkEncoder,
        options: GenerationOptions,
        echo: list[str] | None,
    ) -> Response:
        events = self._events(generation, encoder, options, echo)
        return EventStreamResponse(events, lambda: self._disconnected(generation))

    async def _events(
        self,
        generation: GenerationRequest,
        encoder: ChunkEncoder,
        options: GenerationOptions,
        echo: list[str] | None,
    ) -> AsyncGenerator[bytes, None]:
        choices = generation.choices
        offsets = [0] * len(choices)
        try:
            for choice in choices:
                if echo is not None:
                    offsets[choice.index] = len(echo[choice.index])
                    yield encoder.text(choice.index, echo[choice.index])
                elif encoder.is_chat:
                    yield encoder.role(choice.index)
            # One write per wake-up: every choice's news, and at the end usage and [DONE] too.
            while True:
                chunks: list[bytes] = []
                for choice in choices:
                    delta = choice.take()
                    if delta is None or not (delta.text or delta.finish_reason or delta.logprobs):
                        continue
                    chunks.append(encoder.delta(choice, delta, offsets[choice.index]))
                    offsets[choice.index] += len(delta.text)
                if generation.error is not None:
                    chunks += (error_event(generation.error.body()), DONE)
                elif generation.finished:
                    if options.include_usage:
                        chunks.append(encoder.usage(generation))
                    chunks.append(DONE)
                if chunks:
                    yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if generation.error is not None or generation.finished:
                    return
                await generation.wait()
        finally:
            if not generation.finished:
                self._client.abort(generation)


def _refusal(error: InvalidRequestError, prompt_param: str) -> BadRequestError:
    """The 400 for a prompt the engine's limits refuse, naming the field to change."""
    param = prompt_param if error.param == "prompt" else error.param
    if isinstance(error, PromptTooLongError):
        return ContextLengthExceededError(str(error), param=param)
    return BadRequestError(str(error), param=param)


async def _run_user_work(work: Callable[[], T], offload: bool) -> T:
    """Run template rendering / tokenization; its `InvalidRequestError`s are the user's 400s."""
    try:
        return await asyncio.to_thread(work) if offload else work()
    except InvalidRequestError as error:
        raise BadRequestError(str(error)) from None
