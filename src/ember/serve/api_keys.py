"""API keys: made with `secrets`, stored only as SHA-256 hashes, logged by a short id.

A key is looked up by its hash in a dict, which is timing-safe for the key: the time a lookup
takes depends on the hash of what the caller sent, and a caller who could measure how many
leading bytes of their guess's hash match a stored hash would still learn nothing about the key
itself, because no one can choose a key whose SHA-256 has given leading bytes (preimage
resistance). The stored hash is then compared once more with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-ember-"
HASH_PREFIX = "sha256:"
_KEY_BYTES = 32  # 256 bits of randomness
SHORT_ID_CHARS = 8


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def key_hash(key: str) -> str:
    """What a tenants file stores: `sha256:` and 64 hex digits."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def short_id(stored_hash: str) -> str:
    """The key's name in logs and messages: the first 8 hex digits of its hash."""
    return stored_hash.removeprefix(HASH_PREFIX)[:SHORT_ID_CHARS]


def hashes_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_key_hash(value: str) -> bool:
    digits = value.removeprefix(HASH_PREFIX)
    return (
        value.startswith(HASH_PREFIX)
        and len(digits) == 64
        and all(c in "0123456789abcdef" for c in digits)
    )
