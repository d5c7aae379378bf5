"""A paged KV cache with prefix caching, as vLLM V1's block pool keeps it.

The cache is `num_blocks` blocks of `block_size` tokens. A sequence holds a list of blocks; a
block is shared by every sequence whose prompt starts with the same tokens up to the end of that
block. A full prompt block is known by a hash of its token ids chained with the previous block's
hash, so two blocks are equal only when the whole prefix before them is equal too.

Free blocks wait in one LRU queue. A freed block that holds a cached prefix keeps its hash and
stays findable until it is handed out again: allocation takes the least recently freed block
first and evicts whatever prefix it held. A sequence's blocks are freed tail first, so the end of
a prompt is evicted before its beginning, which more requests share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(token_ids: Sequence[int], block_size: int, limit: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of `token_ids` (at most `limit` blocks)."""
    n = len(token_ids) // block_size
    if limit is not None:
        n = min(n, limit)
    out: list[int] = []
    prev = 0
    for i in range(n):
        prev = hash((prev, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        out.append(prev)
    return out


class KVCache:
    """Block accounting for one replica: reference counts, an LRU free queue, a prefix index."""

    __slots__ = (
        "_free",
        "_hash_of",
        "_ref",
        "block_size",
        "cached",
        "evictions",
        "num_blocks",
        "prefix_caching",
    )

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        # Free blocks, least recently freed first. Values unused: an ordered set.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.evictions = 0

    @property
    def free_blocks(self) -> int:
        """Blocks no sequence holds (cached prefixes among them, until they are handed out)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks held by running sequences (vLLM's kv_cache_usage_perc, 0..1)."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold `tokens` tokens (a partly filled last block counts)."""
        return -(-tokens // self.block_size)

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` (not yet referenced)."""
        if not self.prefix_caching:
            return []
        out = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            out.append(block)
        return out

    def can_take(self, hit_blocks: Sequence[int], new_blocks: int) -> bool:
        """Whether `new_blocks` more blocks fit once `hit_blocks` are held."""
        reclaimed = sum(1 for b in hit_blocks if self._ref[b] == 0)
        return new_blocks <= len(self._free) - reclaimed

    def take(self, blocks: Sequence[int]) -> None:
        """Hold already cached blocks (a prefix hit)."""
        for b in blocks:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        """n fresh blocks (evicting the least recently freed prefixes), or None if too few."""
        if n > len(self._free):
            return None
        return [self._claim() for _ in range(n)]

    def allocate_one(self) -> int | None:
        """One fresh block; the fast path of a decode crossing a block boundary."""
        if not self._free:
            return None
        return self._claim()

    def _claim(self) -> int:
        # The least recently freed block; a prefix it still held is no longer findable.
        b, _ = self._free.popitem(last=False)
        h = self._hash_of[b]
        if h is not None:
            self._hash_of[b] = None
            if self.cached.get(h) == b:
                del self.cached[h]
                self.evictions += 1
        self._ref[b] = 1
        return b

    def publish(self, block: int, block_hash: int) -> None:
        """Make a block that now holds a full prompt block findable by later requests."""
        if not self.prefix_caching or self._hash_of[block] is not None:
            return
        if block_hash in self.cached:  # an equal block exists already: keep the first
            return
        self._hash_of[block] = block_hash
        self.cached[block_hash] = block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block, tail first; unreferenced blocks become free."""
        ref, free = self._ref, self._free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                if self._hash_of[b] is None:
                    # Nothing worth keeping: hand it out before the cached ones.
                    free[b] = None
                    free.move_to_end(b, last=False)
                else:
                    free[b] = None
