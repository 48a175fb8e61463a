from __future__ import annotations

from ember.engine.kv_cache_pool import KVCachePool

from .helpers import make_seq


def compute_all(pool: KVCachePool, seq) -> None:  # type: ignore[no-untyped-def]
    seq.num_computed_tokens = seq.num_tokens
    pool.register_computed(seq)


def test_allocation_covers_all_tokens_and_free_returns_blocks() -> None:
    pool = KVCachePool(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    assert pool.try_allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert pool.num_free_blocks == 5
    assert pool.ensure_capacity(seq, 13)
    assert len(seq.block_table) == 4
    pool.free(seq)
    assert pool.num_free_blocks == 8 and pool.usage == 0.0


def test_allocation_refused_when_pool_is_short() -> None:
    pool = KVCachePool(num_blocks=2, block_size=4)
    assert not pool.try_allocate(make_seq(list(range(9))))
    assert pool.num_free_blocks == 2


def test_prefix_hit_reuses_blocks_and_counts() -> None:
    pool = KVCachePool(num_blocks=16, block_size=4)
    a = make_seq(list(range(12)) + [100, 101])
    assert pool.try_allocate(a)
    compute_all(pool, a)
    b = make_seq(list(range(12)) + [200])
    assert pool.try_allocate(b)
    assert b.block_table[:3] == a.block_table[:3]
    assert b.num_computed_tokens == 12 and b.num_cached_prompt_tokens == 12
    assert pool.stats.hits == 12 and pool.stats.queries == 14 + 13


def test_last_token_is_never_served_from_cache() -> None:
    pool = KVCachePool(num_blocks=16, block_size=4)
    a = make_seq(list(range(8)))
    pool.try_allocate(a)
    compute_all(pool, a)
    b = make_seq(list(range(8)))
    pool.try_allocate(b)
    assert b.num_computed_tokens == 4  # the second block is recomputed for its logits
    assert b.block_table[1] != a.block_table[1]


def test_freed_cached_blocks_survive_until_evicted_lru() -> None:
    pool = KVCachePool(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5])
    pool.try_allocate(a)
    compute_all(pool, a)
    pool.free(a)
    assert pool.num_free_blocks == 4
    b = make_seq([1, 2, 3, 4, 9])
    pool.try_allocate(b)
    assert b.num_computed_tokens == 4  # hit after free
    pool.free(b)
    c = make_seq([7, 7, 7, 7, 7, 7, 7])  # needs every block: evicts the cached ones
    assert pool.try_allocate(c)
    pool.free(c)
    d = make_seq([1, 2, 3, 4, 9])
    pool.try_allocate(d)
    assert d.num_computed_tokens == 0


def test_different_prefix_does_not_hit_even_with_equal_later_block() -> None:
    pool = KVCachePool(num_blocks=16, block_size=2)
    a = make_seq([1, 2, 3, 4, 5])
    pool.try_allocate(a)
    compute_all(pool, a)
    b = make_seq([9, 9, 3, 4, 5])
    pool.try_allocate(b)
    assert b.num_computed_tokens == 0


def test_prefix_caching_disabled() -> None:
    pool = KVCachePool(num_blocks=16, block_size=2, enable_prefix_caching=False)
    a = make_seq([1, 2, 3, 4, 5])
    pool.try_allocate(a)
    compute_all(pool, a)
    b = make_seq([1, 2, 3, 4, 5])
    pool.try_allocate(b)
    assert b.num_computed_tokens == 0 and pool.stats.hits == 0


def test_a_cache_salt_partitions_the_prefix_cache() -> None:
    pool = KVCachePool(num_blocks=16, block_size=4)
    prompt = list(range(13))  # three full blocks can hit
    first = make_seq(prompt)
    first.cache_salt = "tenant-a"
    assert pool.try_allocate(first)
    compute_all(pool, first)
    for salt, hits in (("tenant-b", 0), (None, 0), ("tenant-a", 12)):
        seq = make_seq(prompt)
        seq.cache_salt = salt
        assert pool.try_allocate(seq)
        assert seq.num_computed_tokens == hits, salt
        pool.free(seq)


def test_block_hashes_are_cryptographic_and_chained() -> None:
    from ember.engine.kv_cache_pool import chain_hash, root_hash

    root = root_hash(None)
    one = chain_hash(root, (1, 2, 3, 4))
    assert len(one) == 16 and one != chain_hash(root, (1, 2, 3, 5))
    assert chain_hash(one, (5, 6, 7, 8)) != chain_hash(root_hash("x"), (5, 6, 7, 8))
    # Python's hash((parent, tokens)) of small ints is fixed and easy to collide; these are not.
    assert root_hash("a") != root_hash("b") != root_hash(None)
