"""`/v1/chat/completions`, `/v1/completions`, `/v1/models` and `/v1/models/{id}`.

A generation request goes: body -> typed request (400s) -> the model, among the tenant's (404)
-> prompt token ids (chat template, tokenizer) -> `GenerationRunner` (context check, the
tenant's limits, the engine client) -> either one JSON response or, once the engine has started
it, a stream of SSE chunks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.serve.api_errors import BadRequestError, NotFoundError, quoted
from ember.serve.event_stream import EventStreamResponse
from ember.serve.generation import GenerationRequest
from ember.serve.generation_runner import OFFLOAD_BYTES, GenerationRunner, run_user_work
from ember.serve.http_body import read_body
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
from ember.serve.prompt_tokens import chat_prompt, completion_prompt_ids
from ember.serve.served_model import ServedModel
from ember.serve.tenant_gate import tenant_of
from ember.serve.tool_parsers import ToolCallParser


class ModelRoutes:
    """`/v1/models` and `/v1/models/{id}`: the served model, if the tenant may use it."""

    def __init__(self, model: ServedModel) -> None:
        self._model = model

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
        ]

    def _card(self) -> dict[str, object]:
        model = self._model
        return {"id": model.name, "object": "model", "created": model.created, "owned_by": "ember"}

    async def models(self, request: Request) -> Response:
        cards = [self._card()] if tenant_of(request.scope).allows_model(self._model.name) else []
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request) -> Response:
        """OpenAI's model object; another id, or one outside the tenant's, is a 404."""
        model_id = request.path_params["model_id"]
        if model_id != self._model.name or not tenant_of(request.scope).allows_model(model_id):
            raise NotFoundError(
                f"the model {quoted(model_id)} does not exist",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self._card())


class OpenAIRoutes:
    def __init__(self, runner: GenerationRunner, system_fingerprint: str) -> None:
        self._runner = runner
        self._config = runner.config
        self._model = runner.model
        self._fingerprint = system_fingerprint

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            *ModelRoutes(self._model).routes(),
        ]

    async def chat_completions(self, request: Request) -> Response:
        body = await read_body(request, self._config.max_body_bytes, self._config.read_timeout)
        # A large body is parsed, rendered and tokenized off the loop: its size bounds the
        # text and the count of messages (110,000 empty ones take seconds to render).
        offload = len(body) > OFFLOAD_BYTES
        max_choices = self._config.max_choices
        chat = await run_user_work(lambda: parse_chat_request(body, max_choices), offload)
        tenant = tenant_of(request.scope)
        self._runner.check_model(chat.model, tenant)
        template = self._model.chat_template
        if template is None:
            raise BadRequestError(
                "this model has no chat template; use /v1/completions", param="messages"
            )
        tokenizer = self._model.tokenizer
        prompt = await run_user_work(lambda: chat_prompt(chat, template, tokenizer), offload)
        prompt_ids, options, plan = prompt.ids, prompt.options, prompt.plan
        await self._runner.check_structured(options)
        identity = ResponseIdentity.new("chatcmpl", self._model.name, self._fingerprint)
        generation = self._runner.start(identity.id, [prompt_ids], options, "messages", tenant)
        parsers = None if plan is None else [plan.parser() for _ in range(options.n)]
        if options.stream:
            await self._runner.wait(request, generation, until_started=True)
            encoder = ChunkEncoder(identity, tokenizer, True, options.include_usage)
            return self._stream(generation, encoder, options, None, parsers)
        await self._runner.wait(request, generation)
        return JSONResponse(chat_completion_body(identity, generation, tokenizer, parsers))

    async def completions(self, request: Request) -> Response:
        body = await read_body(request, self._config.max_body_bytes, self._config.read_timeout)
        offload = len(body) > OFFLOAD_BYTES
        max_choices = self._config.max_choices
        completion = await run_user_work(
            lambda: parse_completion_request(body, max_choices), offload
        )
        tenant = tenant_of(request.scope)
        self._runner.check_model(completion.model, tenant)
        tokenizer = self._model.tokenizer
        prompt_ids = await run_user_work(
            lambda: completion_prompt_ids(completion, tokenizer), offload
        )
        await self._runner.check_structured(completion.options)
        echo: list[str] | None = None
        if completion.echo:
            prompts = [p if isinstance(p, str) else tokenizer.decode(p) for p in completion.prompts]
            echo = [prompt for prompt in prompts for _ in range(completion.options.n)]
        identity = ResponseIdentity.new("cmpl", self._model.name, self._fingerprint)
        generation = self._runner.start(
            identity.id, prompt_ids, completion.options, "prompt", tenant
        )
        if completion.options.stream:
            await self._runner.wait(request, generation, until_started=True)
            encoder = ChunkEncoder(identity, tokenizer, False, completion.options.include_usage)
            return self._stream(generation, encoder, completion.options, echo)
        await self._runner.wait(request, generation)
        return JSONResponse(completion_body(identity, generation, tokenizer, echo))

    def _stream(
        self,
        generation: GenerationRequest,
        encoder: ChunkEncoder,
        options: GenerationOptions,
        echo: list[str] | None,
        parsers: list[ToolCallParser | None] | None = None,
    ) -> Response:
        events = self._events(generation, encoder, options, echo, parsers)
        return EventStreamResponse(events, lambda: self._runner.disconnected(generation))

    async def _events(
        self,
        generation: GenerationRequest,
        encoder: ChunkEncoder,
        options: GenerationOptions,
        echo: list[str] | None,
        parsers: list[ToolCallParser | None] | None,
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
                    parser = None if parsers is None else parsers[choice.index]
                    if parser is not None:
                        found = parser.feed(delta.text)
                        if delta.finish_reason is not None:
                            found += parser.finish()
                        chunks += encoder.tool_events(choice, delta, parser, found)
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
            self._runner.abort_unfinished(generation)
