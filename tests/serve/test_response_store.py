"""The bounded store of responses behind `previous_response_id`: count, bytes, tenants."""

from __future__ import annotations

from ember.serve.response_store import ResponseStore, StoredResponse


def stored(response_id: str, text: str = "hi", tenant: str = "acme") -> StoredResponse:
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": text}]
    return StoredResponse.of(response_id, tenant, messages, {"id": response_id}, text)


def test_the_least_recently_used_go_first_past_the_count() -> None:
    store = ResponseStore(max_responses=2)
    store.put(stored("a"))
    store.put(stored("b"))
    assert store.get("a", "acme") is not None  # now b is the least recently used
    store.put(stored("c"))
    assert [r is not None for r in (store.get(i, "acme") for i in "abc")] == [True, False, True]
    assert len(store) == 2


def test_bytes_are_bounded_and_counted_back_on_eviction() -> None:
    one = stored("a", "x" * 1000)
    store = ResponseStore(max_bytes=int(one.size * 2.5))
    for response_id in "abcde":
        assert store.put(stored(response_id, "x" * 1000))
        assert store.num_bytes <= store.max_bytes
    assert len(store) == 2 and store.num_bytes == 2 * one.size
    assert store.get("e", "acme") is not None and store.get("a", "acme") is None


def test_a_response_larger_than_the_store_is_not_kept() -> None:
    store = ResponseStore(max_bytes=10_000)
    store.put(stored("small"))
    assert not store.put(stored("huge", "x" * 10_000))
    assert store.get("huge", "acme") is None and store.get("small", "acme") is not None


def test_another_tenants_response_is_unknown() -> None:
    store = ResponseStore()
    store.put(stored("a", tenant="acme"))
    assert store.get("a", "globex") is None
    assert not store.delete("a", "globex")
    assert store.delete("a", "acme") and store.get("a", "acme") is None
    assert store.num_bytes == 0


def test_putting_an_id_again_replaces_it() -> None:
    store = ResponseStore()
    store.put(stored("a", "x"))
    store.put(stored("a", "y" * 100))
    assert len(store) == 1 and store.num_bytes == stored("a", "y" * 100).size
