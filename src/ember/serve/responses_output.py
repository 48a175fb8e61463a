"""OpenAI's response object and its stream of events, for a text answer.

A response holds one output item, the assistant's message, with one `output_text` part. Its
stream is OpenAI's sequence of typed events, each numbered: `response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`, then a
`response.output_text.delta` per piece of text, then `response.output_text.done`,
`response.content_part.done`, `response.output_item.done` and `response.completed` (or
`response.incomplete` when `max_output_tokens` ran out, or `response.failed`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from ember.engine.sequence import FinishReason
from ember.serve.responses_bodies import ResponsesRequest

COMPLETED = "completed"
INCOMPLETE = "incomplete"
FAILED = "failed"
IN_PROGRESS = "in_progress"


def status_of(finish_reason: FinishReason | None) -> str:
    return INCOMPLETE if finish_reason == FinishReason.LENGTH else COMPLETED


@dataclass(frozen=True, slots=True)
class ResponseDraft:
    """What a response's body and events share from its start."""

    id: str
    message_id: str
    created_at: int
    model: str
    request: ResponsesRequest

    @classmethod
    def new(cls, model: str, request: ResponsesRequest) -> ResponseDraft:
        hex_id = uuid.uuid4().hex
        return cls(f"resp_{hex_id}", f"msg_{hex_id}", int(time.time()), model, request)

    def body(
        self,
        status: str,
        text: str | None = None,
        usage: dict[str, object] | None = None,
        error: dict[str, object] | None = None,
    ) -> dict[str, object]:
        request = self.request
        params = request.options.params
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == INCOMPLETE else None
            ),
            "instructions": request.instructions,
            "max_output_tokens": request.options.max_tokens,
            "metadata": request.metadata,
            "model": self.model,
            "output": [] if text is None else [self.message(status, text)],
            "parallel_tool_calls": True,
            "previous_response_id": request.previous_response_id,
            "reasoning": None,
            "store": request.store,
            "temperature": params.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": params.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": request.options.user,
        }

    def message(self, status: str, text: str | None) -> dict[str, object]:
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [] if text is None else [output_text(text)],
        }


def output_text(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(input_tokens: int, output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


class ResponseEvents:
    """The SSE events of one streamed response, numbered from 0."""

    def __init__(self, draft: ResponseDraft) -> None:
        self._draft = draft
        self._sequence_number = 0
        self._at = {"item_id": draft.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> bytes:
        draft = self._draft
        return b"".join(
            (
                self._event("response.created", response=draft.body(IN_PROGRESS)),
                self._event("response.in_progress", response=draft.body(IN_PROGRESS)),
                self._event(
                    "response.output_item.added",
                    output_index=0,
                    item=draft.message(IN_PROGRESS, None),
                ),
                self._event("response.content_part.added", **self._at, part=output_text("")),
            )
        )

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta", **self._at, delta=text, logprobs=[])

    def closing(self, text: str, status: str, counts: dict[str, object]) -> bytes:
        draft = self._draft
        final = "response.completed" if status == COMPLETED else "response.incomplete"
        return b"".join(
            (
                self._event("response.output_text.done", **self._at, text=text, logprobs=[]),
                self._event("response.content_part.done", **self._at, part=output_text(text)),
                self._event(
                    "response.output_item.done", output_index=0, item=draft.message(status, text)
                ),
                self._event(final, response=draft.body(status, text, counts)),
            )
        )

    def failed(self, error: dict[str, object]) -> bytes:
        """`error`: an API error's body; the response's `error` is its code and message."""
        detail = error.get("error")
        assert isinstance(detail, dict)
        reason = {"code": detail.get("code"), "message": detail.get("message")}
        return self._event("response.failed", response=self._draft.body(FAILED, error=reason))

    def _event(self, kind: str, **fields: object) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence_number, **fields}
        self._sequence_number += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
