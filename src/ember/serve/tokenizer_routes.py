"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes.

Benchmark tools and front ends count tokens with the server's own tokenizer instead of
downloading one. `/tokenize` takes `{"model", "prompt"}` (text, tokenized as `/v1/completions`
tokenizes it) or `{"model", "messages", "add_generation_prompt"}` (rendered and tokenized as
`/v1/chat/completions` does, so the count is the prompt the model would see), and answers
`{"count", "max_model_len", "tokens"}` (and `token_strs` when `return_token_strs`).
`/detokenize` takes `{"model", "tokens"}` and answers `{"prompt"}`.
"""

from __future__ import annotations

import dataclasses

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.errors import InvalidRequestError
from ember.serve.api_errors import BadRequestError
from ember.serve.body_decoding import decode_body
from ember.serve.generation_runner import (
    OFFLOAD_BYTES,
    GenerationRunner,
    refusal,
    run_user_work,
)
from ember.serve.http_body import read_body
from ember.serve.openai_requests import parse_chat_request
from ember.serve.tenant_gate import tenant_of
from ember.serve.tool_calling import ToolChoice, plan_tools, tool_call_format

_FIELD_TEXT = {"tokens": "an array of token ids"}


class TokenizeBody(msgspec.Struct):
    model: str | None = None
    prompt: str | None = None
    # Read by the chat parser, as a chat request's; only whether they are there matters here.
    messages: msgspec.Raw = msgspec.Raw()
    add_generation_prompt: bool | None = None
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = None


class DetokenizeBody(msgspec.Struct):
    model: str | None = None
    tokens: list[int] | None = None


class TokenizerRoutes:
    def __init__(self, runner: GenerationRunner) -> None:
        self._runner = runner
        self._model = runner.model

    def routes(self) -> list[Route]:
        return [
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
        ]

    async def tokenize(self, request: Request) -> Response:
        body = await self._body(request)
        tokenizer = self._model.tokenizer

        def encode() -> tuple[TokenizeBody, list[int]]:
            fields = decode_body(body, TokenizeBody, {})
            self._check_model(fields.model, request)
            if bytes(memoryview(fields.messages)[:4]) not in (b"", b"null"):
                if fields.prompt is not None:
                    raise BadRequestError(
                        "give either 'prompt' or 'messages', not both", param="messages"
                    )
                return fields, self._encode_chat(body, fields)
            if fields.prompt is None:
                raise BadRequestError(
                    "'prompt' (text) or 'messages' (a chat) is required",
                    param="prompt",
                    code="missing_required_parameter",
                )
            add_special = fields.add_special_tokens is not False
            return fields, tokenizer.encode(fields.prompt, add_special_tokens=add_special)

        fields, ids = await run_user_work(encode, offload=len(body) > OFFLOAD_BYTES)
        answer: dict[str, object] = {
            "count": len(ids),
            "max_model_len": self._runner.client.limits.context_length,
            "tokens": ids,
        }
        if fields.return_token_strs:
            answer["token_strs"] = [tokenizer.token_text(token_id) for token_id in ids]
        return JSONResponse(answer)

    async def detokenize(self, request: Request) -> Response:
        body = await self._body(request)
        tokenizer = self._model.tokenizer
        limits = self._runner.client.limits

        def decode() -> str:
            fields = decode_body(body, DetokenizeBody, _FIELD_TEXT)
            self._check_model(fields.model, request)
            if fields.tokens is None:
                raise BadRequestError(
                    "'tokens' is required", param="tokens", code="missing_required_parameter"
                )
            try:
                limits.check_prompt_ids(fields.tokens)
            except InvalidRequestError as error:
                raise refusal(error, "tokens") from None
            # As vLLM's: special tokens are kept, so tokenize and detokenize round-trip.
            return tokenizer.decode(fields.tokens, skip_special_tokens=False)

        text = await run_user_work(decode, offload=len(body) > OFFLOAD_BYTES)
        return JSONResponse({"prompt": text})

    async def _body(self, request: Request) -> bytes:
        config = self._runner.config
        return await read_body(request, config.max_body_bytes, config.read_timeout)

    def _check_model(self, name: str | None, request: Request) -> None:
        if name is None:
            raise BadRequestError(
                "'model' is required", param="model", code="missing_required_parameter"
            )
        self._runner.check_model(name, tenant_of(request.scope))

    def _encode_chat(self, body: bytes, fields: TokenizeBody) -> list[int]:
        template = self._model.chat_template
        if template is None:
            raise BadRequestError(
                "this model has no chat template; tokenize a 'prompt' instead", param="messages"
            )
        chat = parse_chat_request(body, self._runner.config.max_choices)
        tokenizer = self._model.tokenizer
        add_generation_prompt = fields.add_generation_prompt is not False
        # The prompt a chat request with these tools would get (`auto` on a template without
        # tool calling counts as `none`: there is nothing to count).
        plan = None
        if chat.tools is not None:
            choice = chat.tools.choice
            if choice.mode == "auto" and tool_call_format(template) is None:
                choice = ToolChoice("none")
            plan = plan_tools(dataclasses.replace(chat.tools, choice=choice), template)
        messages = chat.messages if plan is None else plan.messages(chat.messages)
        tools = None if plan is None else plan.template_tools
        ids = template.encode(messages, tokenizer, add_generation_prompt, tools=tools)
        if fields.add_special_tokens:  # the template writes its own BOS: off by default
            ids = tokenizer.encode("", add_special_tokens=True) + ids
        return ids
