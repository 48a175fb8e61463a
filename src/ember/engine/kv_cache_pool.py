"""Fixed-size KV blocks: allocation, per-sequence block tables, and prefix caching.

The pool hands out block ids; the backend owns the memory they index. A full block is
identified by a chained hash of its tokens (the hash of everything before it and its own
tokens), so equal prefixes map to equal blocks. The hash is cryptographic (BLAKE2b), so that
nobody can craft a prompt whose blocks collide with another's (Python's `hash` of ints is
fixed and invertible), and its chain starts from the sequence's cache salt: sequences of
different salts (tenants) never share blocks, nor learn from timing or metrics whether another
salt's prompt was cached. Blocks are reference-counted; a block whose
count drops to zero stays in the cache, and is evicted least-recently-used first, only when a
fresh block is needed and no never-cached block is free.

Each sequence's block table is kept twice: as its `block_table` list, and as its row
(`table_row`) of the pool's `BlockTables`, from which the runner gathers a step's tables.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from ember.engine.block_tables import BlockTables
from ember.engine.sequence import Sequence

_ROOT_HASH = b"ember-prefix-cache-v1"
_DIGEST_BYTES = 16


@dataclass(slots=True)
class _Block:
    ref_count: int = 0
    hash: bytes | None = None
    tokens: tuple[int, ...] = ()


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens served from the cache


def chain_hash(parent: bytes, tokens: tuple[int, ...]) -> bytes:
    data = parent + struct.pack(f"<{len(tokens)}I", *tokens)
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()


def root_hash(cache_salt: str | None) -> bytes:
    """Where a sequence's chain of block hashes starts: one root per salt."""
    if cache_salt is None:
        return _ROOT_HASH
    salt = cache_salt.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(_ROOT_HASH + b"\0" + salt, digest_size=_DIGEST_BYTES).digest()


class KVCachePool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._never_cached: list[int] = list(range(num_blocks - 1, -1, -1))
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # LRU order, oldest first
        self._by_hash: dict[bytes, int] = {}
        self.stats = PrefixCacheStats()
        self.tables = BlockTables()

    @property
    def num_free_blocks(self) -> int:
        return len(self._never_cached) + len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def try_allocate(self, seq: Sequence) -> bool:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks.

        Sets `num_computed_tokens` to the number of tokens served from the cache. The last
        token is never served from the cache: its logits are needed to sample the next one.
        """
        assert not seq.block_table, "sequence already holds blocks"
        hits = self._lookup_prefix(seq)
        if self._shortfall(seq, hits) > 0:
            return False
        needed_fresh = self.blocks_for(seq.num_tokens) - len(hits)
        for block_id in hits:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                del self._cached_free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            assert block.hash is not None
            seq.block_hashes.append(block.hash)
        for _ in range(needed_fresh):
            seq.block_table.append(self._take_fresh_block())
        seq.table_row = self.tables.acquire(seq.block_table)
        cached_tokens = len(hits) * self.block_size
        seq.num_computed_tokens = cached_tokens
        if seq.num_output_tokens == 0:
            seq.num_cached_prompt_tokens = cached_tokens
            self.stats.queries += seq.num_tokens
            self.stats.hits += cached_tokens
        return True

    def blocks_short_for(self, seq: Sequence) -> int:
        """How many blocks `try_allocate(seq)` lacks now (0: it would succeed)."""
        return max(0, self._shortfall(seq, self._lookup_prefix(seq)))

    def blocks_freed_by(self, seq: Sequence) -> int:
        """Blocks that freeing `seq` alone would return to the pool (those it does not share)."""
        return sum(1 for block_id in seq.block_table if self._blocks[block_id].ref_count == 1)

    def _shortfall(self, seq: Sequence, hits: list[int]) -> int:
        # Cached blocks not in use count among the free ones: taking them as hits uses them up.
        needed_fresh = self.blocks_for(seq.num_tokens) - len(hits)
        hits_idle = sum(1 for block_id in hits if self._blocks[block_id].ref_count == 0)
        return needed_fresh + hits_idle - self.num_free_blocks

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to hold `num_tokens`; False (nothing taken) if the pool is short."""
        missing = self.blocks_for(num_tokens) - len(seq.block_table)
        if missing <= 0:
            return True
        if missing > self.num_free_blocks:
            return False
        if seq.table_row < 0:
            seq.table_row = self.tables.acquire(seq.block_table)
        for _ in range(missing):
            block_id = self._take_fresh_block()
            seq.block_table.append(block_id)
            self.tables.append(seq.table_row, block_id)
        return True

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so a partially shared chain is evicted from its end.
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self._cached_free[block_id] = None
                else:
                    self._never_cached.append(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()
        if seq.table_row >= 0:
            self.tables.release(seq.table_row)
            seq.table_row = -1

    def mark_computed(self, seqs: Iterable[Sequence], counts: Iterable[int]) -> None:
        """After a step: `counts[i]` more tokens of `seqs[i]` have their K/V in the cache.
        Publishes the blocks this completed (`register_computed`, where a block filled up)."""
        bs = self.block_size
        caching = self.enable_prefix_caching
        for seq, count in zip(seqs, counts, strict=True):
            computed = seq.num_computed_tokens + count
            seq.num_computed_tokens = computed
            if caching and computed // bs > len(seq.block_hashes):
                self.register_computed(seq)

    def register_computed(self, seq: Sequence) -> None:
        """Publish the sequence's newly completed full blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full_blocks = seq.num_computed_tokens // self.block_size
        bs = self.block_size
        for index in range(len(seq.block_hashes), full_blocks):
            parent = seq.block_hashes[-1] if seq.block_hashes else root_hash(seq.cache_salt)
            tokens = tuple(seq.token_ids[index * bs : (index + 1) * bs])
            block_hash = chain_hash(parent, tokens)
            seq.block_hashes.append(block_hash)
            block = self._blocks[seq.block_table[index]]
            if block.hash is None and block_hash not in self._by_hash:
                block.hash, block.tokens = block_hash, tokens
                self._by_hash[block_hash] = seq.block_table[index]

    def reset_prefix_cache(self) -> None:
        for block_id in list(self._cached_free):
            self._evict(block_id)
            self._never_cached.append(block_id)
        self._cached_free.clear()

    def _lookup_prefix(self, seq: Sequence) -> list[int]:
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        hits: list[int] = []
        parent = root_hash(seq.cache_salt)
        for index in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[index * bs : (index + 1) * bs])
            parent = chain_hash(parent, tokens)
            block_id = self._by_hash.get(parent)
            if block_id is None or self._blocks[block_id].tokens != tokens:
                break
            hits.append(block_id)
        return hits

    def _take_fresh_block(self) -> int:
        if self._never_cached:
            block_id = self._never_cached.pop()
        else:
            block_id, _ = self._cached_free.popitem(last=False)
            self._evict(block_id)
        self._blocks[block_id].ref_count = 1
        return block_id

    def _evict(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.hash is not None and self._by_hash.get(block.hash) == block_id:
            del self._by_hash[block.hash]
        block.hash, block.tokens = None, ()
