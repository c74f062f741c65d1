"""Which replica holds which prompt blocks: chained block hashes and a bounded, LRU prefix index.

Pure (no Ray, no vLLM): the router (`router.PrefixAwareRouter`) and the routing simulation
(`benchmarks/routing.py`) call exactly these functions.

**Blocks as vLLM caches them.** vLLM 0.29's automatic prefix cache (`vllm/v1/core/
kv_cache_utils.py`, `hash_block_tokens` and `get_request_block_hasher`) keys each *full* block
of `block_size` tokens by `hash_fn((parent_hash, block_token_ids, extra_keys))`, where the
first block's parent is a seed hash (`NONE_HASH`) and `extra_keys` carry the request's
`cache_salt` (first block only), LoRA name and multimodal inputs; a trailing partial block is
never cached, and a hit never covers a prompt's last token (vLLM recomputes it). So a block is
reused only after the same tokens *and* the same whole prefix: the same block content after a
different prefix is a different block. `block_hashes` follows that structure one for one (one
hash per full block, each over its parent hash and its tokens, `salt` in the root), so the
number of leading blocks two prompts share here is the number vLLM can hit.

**Not vLLM's values.** The router does not reproduce vLLM's hash *values*. vLLM's default
(`prefix_caching_hash_algo: sha256`) pickles each block and SHA-256es it, about ten times
slower than what the router needs per request (it hashes every prompt on the request path);
its seed is fixed (`"vllm-none-hash"`) only for the SHA-256 algorithms: with `xxhash` or
`xxhash_cbor`, and whenever `PYTHONHASHSEED` differs between processes, each engine process
derives its own `NONE_HASH`, so those values are not comparable across processes at all.
This module uses CPython's tuple hash of integers instead: about a microsecond per block, and
the same in every process and on every 64-bit machine (hashes of ints and tuples of ints
are not randomised by `PYTHONHASHSEED`, unlike those of `str` and `bytes`), which the
routers need because they share placements. Learning evictions from vLLM's KV-cache events
would need a mapping from vLLM's block hashes to these; the router does not do that yet.

**The index** records (block, replica) entries: "this replica was sent a prompt containing
this block". It has a hard size limit with least-recently-used eviction, and insertion touches
a prompt's blocks from the last to the first, so a prefix's root blocks are always at least as
recent as its deeper blocks and eviction trims prefixes from their tails, as vLLM's own free
queue does. Plain dicts and one `OrderedDict` (C-implemented `move_to_end`/`popitem`); the
cost of a decision is about one microsecond per *new* entry (insert plus the eviction it
causes); indexing only every k-th block (`stride`) divides that by k.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

# Blocks per index entry. 1 is exact. 4 (64-token granularity at vLLM's default block size)
# costs routing nothing that matters (47 tokens are ~1.5 ms of prefill on an H100), while a
# new prompt costs a quarter of the inserts and evictions, which dominate the decision time,
# and the same limit covers four times as many prompts (benchmarks/routing.py --index-stride).
DEFAULT_STRIDE: Final = 1
# An index entry's key is `hash << SLOT_BITS | slot`: one int, no tuple per entry.
SLOT_BITS: Final = 16
SLOT_MASK: Final = (1 << SLOT_BITS) - 1


def block_hashes(token_ids: Sequence[int], block_size: int, *, salt: int = 0) -> list[int]:
    """Chained hashes of the full blocks of token_ids (as vLLM's prefix cache hashes blocks:
    each block's hash covers the parent hash and the block's tokens; a trailing partial block
    is not cached).

    `salt` seeds the root (vLLM puts a request's `cache_salt` into its first block): prompts
    with different salts share no block.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
    if not isinstance(salt, int):
        raise TypeError(f"salt must be an int (str hashes differ between processes), got {type(salt).__name__}")
    tokens = token_ids if isinstance(token_ids, tuple) else tuple(token_ids)
    parent = salt
    out: list[int] = []
    for end in range(block_size, len(tokens) + 1, block_size):
        parent = hash((parent, tokens[end - block_size : end]))
        out.append(parent)
    return out


class PrefixIndex:
    """Leading blocks each replica holds, bounded to `max_blocks` (block, replica) entries, LRU.

    With `stride` k > 1 only every k-th block is indexed (the hash of block i covers the whole
    prefix through it, so one entry stands for k blocks): a prompt's match is then known to
    within k - 1 blocks, and an index of the same size covers k times as many prompts for a
    k-th of the work per new prompt. `max_blocks` counts entries either way.

    Each replica gets a small slot number while it has entries; a block's holders are a bit
    mask of slots and an entry's key is one integer (hash and slot), so the index holds no
    per-block containers: less memory, nothing for the garbage collector to walk, and `match`
    narrows the candidates with integer `&`. Not thread-safe: one router owns one index and
    calls it from its event loop.
    """

    def __init__(self, max_blocks: int, *, stride: int = DEFAULT_STRIDE) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
        if stride < 1:
            raise ValueError(f"stride must be at least 1 block, got {stride}")
        self.max_blocks = max_blocks
        self.stride = stride
        # (hash << SLOT_BITS | slot) in least- to most-recently-used order.
        self._lru: OrderedDict[int, None] = OrderedDict()
        # block hash -> bit mask of the slots holding it.
        self._holders: dict[int, int] = {}
        self._slots: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._counts: dict[int, int] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        """Entries held: (block, replica) pairs."""
        return len(self._lru)

    def replicas(self) -> set[str]:
        """Replicas with at least one block in the index."""
        return set(self._slots)

    def match(self, hashes: Sequence[int], replicas: Iterable[str]) -> dict[str, int]:
        """For each of `replicas`, how many leading blocks of `hashes` it holds (0 if none).

        Read-only: matching is not a use (the router inserts what it actually sends). With a
        stride, the answer is a multiple of it: the blocks through the last indexed point held.
        """
        stride = self.stride
        if stride > 1:
            hashes = hashes[stride - 1 :: stride]
        result = dict.fromkeys(replicas, 0)
        slots = self._slots
        alive = 0
        for replica in result:
            slot = slots.get(replica)
            if slot is not None:
                alive |= 1 << slot
        holders = self._holders
        names = self._names
        depth = 0
        for h in hashes:
            if not alive:
                break
            held = holders.get(h, 0)
            if alive & held != alive:
                _assign(result, names, alive & ~held, depth)
                alive &= held
                if not alive:
                    break
            depth += 1
        _assign(result, names, alive, depth)
        if stride > 1:
            for replica, points in result.items():
                result[replica] = points * stride
        return result

    def insert(self, replica: str, hashes: Sequence[int]) -> int:
        """Record that `replica` holds these blocks (or touch them); returns the entries evicted."""
        if self.stride > 1:
            hashes = hashes[self.stride - 1 :: self.stride]
        if not hashes:
            return 0
        slot = self._slot(replica)
        bit = 1 << slot
        lru = self._lru
        holders = self._holders
        touch = lru.move_to_end
        added = 0
        # Deepest first, so the root ends most recently used and eviction trims tails.
        for h in reversed(hashes):
            key = (h << SLOT_BITS) | slot
            if key in lru:
                touch(key)
            else:
                lru[key] = None
                holders[h] = holders.get(h, 0) | bit
                added += 1
        self._counts[slot] += added
        evicted = len(lru) - self.max_blocks
        if evicted <= 0:
            return 0
        counts = self._counts
        pop = lru.popitem
        for _ in range(evicted):
            key, _ = pop(last=False)
            h = key >> SLOT_BITS
            owner = key & SLOT_MASK
            held = holders[h] & ~(1 << owner)
            if held:
                holders[h] = held
            else:
                del holders[h]
            left = counts[owner] - 1
            counts[owner] = left
            if not left:
                self._free_slot(owner)
        return evicted

    def remove_replica(self, replica: str) -> None:
        """Forget every block of a replica that went away.

        A scan of the whole index (milliseconds at 100k entries): replicas go away rarely,
        and a per-replica key set would cost every insert instead.
        """
        slot = self._slots.get(replica)
        if slot is None:
            return
        doomed = [key for key in self._lru if key & SLOT_MASK == slot]
        for key in doomed:
            del self._lru[key]
            self._drop(key >> SLOT_BITS, slot)

    def _slot(self, replica: str) -> int:
        slot = self._slots.get(replica)
        if slot is None:
            if self._free:
                slot = self._free.pop()
            elif len(self._slots) <= SLOT_MASK:
                slot = len(self._slots)
            else:
                raise ValueError(f"more than {SLOT_MASK + 1} replicas hold blocks at once")
            self._slots[replica] = slot
            self._names[slot] = replica
            self._counts[slot] = 0
        return slot

    def _drop(self, h: int, slot: int) -> None:
        held = self._holders[h] & ~(1 << slot)
        if held:
            self._holders[h] = held
        else:
            del self._holders[h]
        left = self._counts[slot] - 1
        self._counts[slot] = left
        if not left:
            self._free_slot(slot)

    def _free_slot(self, slot: int) -> None:
        """The replica's last entry went: its slot can serve another replica."""
        del self._counts[slot]
        del self._slots[self._names.pop(slot)]
        self._free.append(slot)


def _assign(result: dict[str, int], names: dict[int, str], mask: int, depth: int) -> None:
    while mask:
        low = mask & -mask
        result[names[low.bit_length() - 1]] = depth
        mask ^= low
