"""The responses the server still has, for `previous_response_id` and `GET /v1/responses/{id}`.

In memory, bounded both in count and in bytes of text: the least recently used go first, so a
conversation that goes on keeps its newest turn. Each entry holds its whole conversation (a
chain's turns share their strings, so the byte count is an upper bound of the memory), and
belongs to the tenant that made it: another tenant's id is as unknown as an evicted one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_RESPONSES = 1024
DEFAULT_MAX_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    # The conversation through this response's answer, without its `instructions` (which a
    # follow-up does not inherit, as OpenAI's does not).
    messages: tuple[dict[str, str], ...]
    body: dict[str, object]  # the response object as it was answered
    size: int  # bytes of text it holds, at most

    @classmethod
    def of(
        cls,
        response_id: str,
        tenant: str,
        messages: Sequence[dict[str, str]],
        body: dict[str, object],
        answer_text: str,
    ) -> StoredResponse:
        text = sum(len(m["content"]) + len(m["role"]) for m in messages) + len(answer_text)
        # 4 bytes a character at most, and a few hundred for the objects around the text.
        size = 4 * text + 256 * (len(messages) + 4)
        return cls(response_id, tenant, tuple(messages), body, size)


class ResponseStore:
    def __init__(
        self, max_responses: int = DEFAULT_MAX_RESPONSES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_bytes(self) -> int:
        return self._bytes

    def put(self, response: StoredResponse) -> bool:
        """Keep `response`, evicting the least recently used; False if it alone is too large."""
        if response.size > self.max_bytes or self.max_responses == 0:
            return False
        self._remove(response.id)
        self._entries[response.id] = response
        self._bytes += response.size
        while len(self._entries) > self.max_responses or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
        return True

    def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        response = self._entries.get(response_id)
        if response is None or response.tenant != tenant:
            return None
        self._entries.move_to_end(response_id)
        return response

    def delete(self, response_id: str, tenant: str) -> bool:
        if self.get(response_id, tenant) is None:
            return False
        self._remove(response_id)
        return True

    def _remove(self, response_id: str) -> None:
        old = self._entries.pop(response_id, None)
        if old is not None:
            self._bytes -= old.size
