"""`/v1/responses`: OpenAI's Responses API for text, on the same generation path as chat.

A response goes: body -> typed request (400s, naming a refused field) -> the model (404) ->
the conversation: the stored one of `previous_response_id` (404 when the server no longer has
it), then `input`, with `instructions` as the system message -> the chat template ->
`GenerationRunner` (the context check, the tenant's limits, the engine) -> one response object,
or a stream of OpenAI's events. With `store` (the default) the response is kept in a bounded
`ResponseStore`, so a follow-up can name it and `GET /v1/responses/{id}` can read it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.serve.api_errors import BadRequestError, NotFoundError, quoted
from ember.serve.event_stream import EventStreamResponse
from ember.serve.generation import Choice, GenerationRequest
from ember.serve.generation_runner import OFFLOAD_BYTES, GenerationRunner, run_user_work
from ember.serve.http_body import read_body
from ember.serve.response_store import ResponseStore, StoredResponse
from ember.serve.responses_bodies import ResponsesRequest, parse_responses_request
from ember.serve.responses_output import ResponseDraft, ResponseEvents, status_of, usage
from ember.serve.tenant_gate import tenant_of


class ResponsesRoutes:
    def __init__(self, runner: GenerationRunner, store: ResponseStore) -> None:
        self._runner = runner
        self._model = runner.model
        self._store = store

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", self.delete, methods=["DELETE"]),
        ]

    async def create(self, request: Request) -> Response:
        config = self._runner.config
        body = await read_body(request, config.max_body_bytes, config.read_timeout)
        offload = len(body) > OFFLOAD_BYTES
        parsed = await run_user_work(lambda: parse_responses_request(body), offload)
        tenant = tenant_of(request.scope)
        self._runner.check_model(parsed.model, tenant)
        conversation = [*self._history(parsed, tenant.name), *parsed.messages]
        template = self._model.chat_template
        if template is None:
            raise BadRequestError(
                "this model has no chat template; use /v1/completions", param="input"
            )
        system = [{"role": "system", "content": parsed.instructions}] if parsed.instructions else []
        tokenizer = self._model.tokenizer

        def render() -> list[int]:
            return template.encode([*system, *conversation], tokenizer, add_generation_prompt=True)

        prompt_ids = await run_user_work(render, offload)
        await self._runner.check_structured(parsed.options)
        draft = ResponseDraft.new(self._model.name, parsed)
        generation = self._runner.start(
            draft.id, [prompt_ids], parsed.options, "input", tenant, "max_output_tokens"
        )
        if parsed.options.stream:
            await self._runner.wait(request, generation, until_started=True)
            events = self._events(generation, draft, conversation, tenant.name)
            return EventStreamResponse(events, lambda: self._runner.disconnected(generation))
        await self._runner.wait(request, generation)
        choice = generation.choices[0]
        delta = choice.take()
        text = "" if delta is None else delta.text
        answer = draft.body(status_of(choice.finish_reason), text, _usage(choice))
        self._keep(draft, conversation, answer, text, tenant.name)
        return JSONResponse(answer)

    async def retrieve(self, request: Request) -> Response:
        stored = self._stored(request)
        return JSONResponse(stored.body)

    async def delete(self, request: Request) -> Response:
        stored = self._stored(request)
        self._store.delete(stored.id, tenant_of(request.scope).name)
        return JSONResponse({"id": stored.id, "object": "response", "deleted": True})

    def _stored(self, request: Request) -> StoredResponse:
        response_id = request.path_params["response_id"]
        stored = self._store.get(response_id, tenant_of(request.scope).name)
        if stored is None:
            raise NotFoundError(
                f"no response with id {quoted(response_id)} is stored on this server (it was "
                "made with 'store': false, or has been evicted)",
                param="response_id",
                code="response_not_found",
            )
        return stored

    def _history(self, parsed: ResponsesRequest, tenant: str) -> tuple[dict[str, str], ...]:
        if parsed.previous_response_id is None:
            return ()
        previous = self._store.get(parsed.previous_response_id, tenant)
        if previous is None:
            raise NotFoundError(
                f"previous response {quoted(parsed.previous_response_id)} was not found: this "
                f"server keeps the last {self._store.max_responses} stored responses at most, "
                "and only those made with 'store': true; send the whole conversation as "
                "'input' instead",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return previous.messages

    def _keep(
        self,
        draft: ResponseDraft,
        conversation: list[dict[str, str]],
        answer: dict[str, object],
        text: str,
        tenant: str,
    ) -> None:
        if draft.request.store:
            messages = [*conversation, {"role": "assistant", "content": text}]
            self._store.put(StoredResponse.of(draft.id, tenant, messages, answer, text))

    async def _events(
        self,
        generation: GenerationRequest,
        draft: ResponseDraft,
        conversation: list[dict[str, str]],
        tenant: str,
    ) -> AsyncGenerator[bytes, None]:
        events = ResponseEvents(draft)
        choice = generation.choices[0]
        pieces: list[str] = []
        try:
            yield events.opening()
            while True:
                chunks: list[bytes] = []
                delta = choice.take()
                if delta is not None and delta.text:
                    pieces.append(delta.text)
                    chunks.append(events.delta(delta.text))
                if generation.error is not None:
                    chunks.append(events.failed(generation.error.body()))
                elif generation.finished:
                    text = "".join(pieces)
                    status = status_of(choice.finish_reason)
                    counts = _usage(choice)
                    chunks.append(events.closing(text, status, counts))
                    self._keep(draft, conversation, draft.body(status, text, counts), text, tenant)
                if chunks:
                    yield b"".join(chunks)
                if generation.error is not None or generation.finished:
                    return
                await generation.wait()
        finally:
            self._runner.abort_unfinished(generation)


def _usage(choice: Choice) -> dict[str, object]:
    return usage(len(choice.prompt_ids), choice.num_output_tokens)
