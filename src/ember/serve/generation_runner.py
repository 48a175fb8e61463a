"""Running one generation request through the engine, whichever API it came in by.

Every generating route (chat and text completions, responses) goes the same way once it has
prompt token ids: the model, among the tenant's (404) -> each prompt checked against the
engine's limits (400 stating the numbers) -> the tenant's limits (429: its request and tokens
reserved) -> the engine client (503) -> waiting for the engine to start it or finish it. A
client that disconnects, or a deadline that passes, aborts the request's sequences in the
engine; however it ends, the tokens it did not use go back to its tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from starlette.requests import Request

from ember.engine.grammar import GrammarCompiler
from ember.errors import InvalidRequestError, PromptTooLongError, StructuredOutputError
from ember.serve.api_errors import (
    APIError,
    BadRequestError,
    ClientClosedRequestError,
    ContextLengthExceededError,
    NotFoundError,
    quoted,
)
from ember.serve.background_lane import BackgroundLane
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.event_stream import disconnect_watch
from ember.serve.generation import GenerationRequest
from ember.serve.metrics import TenantMetrics
from ember.serve.openai_requests import GenerationOptions
from ember.serve.rate_limits import RateLimiter
from ember.serve.served_model import ServedModel
from ember.serve.tenants import Tenant

# Bodies larger than this (bytes) are parsed, rendered and tokenized off the event loop.
OFFLOAD_BYTES = 16_384

T = TypeVar("T")


class GenerationRunner:
    def __init__(
        self,
        config: ServerConfig,
        model: ServedModel,
        client: EngineClient,
        limiter: RateLimiter,
        metrics: TenantMetrics,
        lane: BackgroundLane,
    ) -> None:
        """`lane`: where background classes' requests wait their turns (the server's one, which
        its tenant gate shares)."""
        self.config = config
        self.lane = lane
        self.model = model
        self.client = client
        self._limiter = limiter
        self._metrics = metrics
        # The server's own compiles of structured outputs: a spec the engine could not compile
        # is a 400 before anything is reserved, and a schema sent again is checked at once.
        self._grammars = GrammarCompiler(model.tokenizer)

    async def check_structured(self, options: GenerationOptions) -> None:
        """400 naming the field if the request's structured output cannot compile (or can
        produce nothing); compiled on a thread (llguidance drops the GIL), so a large schema
        does not hold up the server."""
        spec = options.params.structured
        if spec is None:
            return
        try:
            await asyncio.to_thread(self._grammars.matcher, spec)
        except StructuredOutputError as error:
            raise BadRequestError(str(error), param=error.param) from None

    def check_model(self, name: str, tenant: Tenant) -> None:
        check_model(self.model.name, name, tenant)

    def start(
        self,
        response_id: str,
        prompts: Sequence[list[int]],
        options: GenerationOptions,
        prompt_param: str,
        tenant: Tenant,
        max_tokens_param: str = "max_tokens",
    ) -> GenerationRequest:
        """Check, reserve and submit; `prompt_param` and `max_tokens_param` name the body's
        fields of the prompts and of the most tokens to generate, for the 400s."""
        deadlines = [t for t in (self.config.request_timeout, options.timeout) if t is not None]
        generation = GenerationRequest(
            response_id, min(deadlines) if deadlines else None, options.cache_salt
        )
        generation.wake_on_tokens = options.stream
        limits = self.client.limits
        most_tokens = 0  # what the request can use at most: reserved from the tenant's tokens
        for prompt_ids in prompts:
            try:
                limits.check_prompt_ids(prompt_ids)
                max_tokens = limits.max_tokens_for(len(prompt_ids), options.max_tokens)
            except InvalidRequestError as error:
                raise refusal(error, prompt_param, max_tokens_param) from None
            most_tokens += options.n * (len(prompt_ids) + max_tokens)
            for choice in range(options.n):
                generation.add_choice(
                    prompt_ids, options.params_for(max_tokens, choice), self.model.tokenizer
                )
        service_class = tenant.service_class
        generation.scheduling = tenant.scheduling(options.priority)
        generation.service_class = service_class
        generation.stream_interval = service_class.stream_interval
        if service_class.background:
            generation.lane = self.lane
        generation.series = self._metrics.series(tenant.name, service_class.name)
        reservation = self._limiter.admit(tenant, most_tokens)
        generation.on_settled = lambda request: reservation.settle(request.used_tokens)
        try:
            self.client.submit(generation)
        except APIError:
            reservation.cancel()
            raise
        return generation

    def disconnected(self, generation: GenerationRequest) -> None:
        """The client went away: its sequences leave the engine before the next step."""
        self.client.abort(generation)
        generation.fail(ClientClosedRequestError("the client closed the connection"))

    def abort_unfinished(self, generation: GenerationRequest) -> None:
        if not generation.finished:
            self.client.abort(generation)

    async def wait(
        self, request: Request, generation: GenerationRequest, until_started: bool = False
    ) -> None:
        """Until the request finishes, or (`until_started`) the engine starts it: a stream's
        answer waits for that, so a request shed or timed out in the queue is a 503, not a
        200 with an error event."""
        async with disconnect_watch(request, lambda: self.disconnected(generation)):
            try:
                while not (generation.finished or (until_started and generation.admitted)):
                    await generation.wait()
            except BaseException:
                self.abort_unfinished(generation)
                raise
        if generation.error is not None:
            raise generation.error


def check_model(served: str, name: str, tenant: Tenant) -> None:
    """404 `model_not_found` unless `name` is the served model and the tenant may use it."""
    if name != served:
        raise NotFoundError(
            f"the model {quoted(name)} does not exist; this server serves {quoted(served)}",
            param="model",
            code="model_not_found",
        )
    if not tenant.allows_model(name):
        raise NotFoundError(
            f"the model {quoted(name)} does not exist or your key may not use it",
            param="model",
            code="model_not_found",
        )


def refusal(
    error: InvalidRequestError, prompt_param: str, max_tokens_param: str = "max_tokens"
) -> BadRequestError:
    """The 400 for a prompt the engine's limits refuse, naming the field to change as the
    body names it (the engine says `prompt` and `max_tokens`)."""
    message = str(error)
    param = error.param
    if param == "prompt":
        param = prompt_param
    elif param == "max_tokens" and max_tokens_param != "max_tokens":
        param = max_tokens_param
        message = message.replace("max_tokens", max_tokens_param)
    if isinstance(error, PromptTooLongError):
        return ContextLengthExceededError(message, param=param)
    return BadRequestError(message, param=param)


async def run_user_work(work: Callable[[], T], offload: bool) -> T:
    """Run parsing, template rendering or tokenization of a client's body, on a thread when
    `offload`; its `InvalidRequestError`s are the client's 400s."""
    try:
        return await asyncio.to_thread(work) if offload else work()
    except InvalidRequestError as error:
        raise BadRequestError(str(error)) from None
