"""Block hashes chain like vLLM's, and the prefix index stays bounded, exact and forgetful."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdeploy.serving.routing.index import PrefixIndex, block_hashes

BS = 4


def test_one_hash_per_full_block_and_no_partial_block() -> None:
    assert len(block_hashes(range(15), BS)) == 3
    assert len(block_hashes(range(16), BS)) == 4
    assert block_hashes(range(3), BS) == []
    # The partial block does not change the full blocks' hashes.
    assert block_hashes(range(17), BS) == block_hashes(range(16), BS)


@given(
    prefix_a=st.lists(st.integers(0, 50), min_size=BS, max_size=3 * BS),
    prefix_b=st.lists(st.integers(0, 50), min_size=BS, max_size=3 * BS),
    block=st.lists(st.integers(0, 50), min_size=BS, max_size=BS),
)
def test_same_block_after_a_different_prefix_hashes_differently(
    prefix_a: list[int], prefix_b: list[int], block: list[int]
) -> None:
    a = prefix_a[: len(prefix_a) // BS * BS]
    b = prefix_b[: len(prefix_b) // BS * BS]
    ha, hb = block_hashes(a + block, BS), block_hashes(b + block, BS)
    if a == b:
        assert ha == hb
    else:
        assert ha[-1] != hb[-1]


@given(tokens=st.lists(st.integers(0, 1000), max_size=40), cut=st.integers(0, 40))
def test_shared_prefix_gives_shared_leading_hashes(tokens: list[int], cut: int) -> None:
    """Two prompts share exactly as many leading hashes as they share full leading blocks."""
    other = [*tokens[:cut], 1001, *tokens[cut:]]
    shared_blocks = min(cut, len(tokens)) // BS
    ha, hb = block_hashes(tokens, BS), block_hashes(other, BS)
    common = next((i for i, (x, y) in enumerate(zip(ha, hb, strict=False)) if x != y), min(len(ha), len(hb)))
    assert common == shared_blocks


def test_salt_separates_prompts() -> None:
    tokens = list(range(32))
    assert set(block_hashes(tokens, BS, salt=1)).isdisjoint(block_hashes(tokens, BS, salt=2))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2, 3], 0)
    with pytest.raises(TypeError, match="salt must be an int"):
        block_hashes([1, 2, 3], 1, salt="tenant")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_blocks"):
        PrefixIndex(0)
    with pytest.raises(ValueError, match="stride"):
        PrefixIndex(10, stride=0)


def test_hashes_are_the_same_in_another_process_with_another_hash_seed() -> None:
    """Routers in different processes share placements: the values must not depend on PYTHONHASHSEED."""
    code = "from llmdeploy.serving.routing.index import block_hashes; print(block_hashes(range(64), 16, salt=7))"
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.add(done.stdout.strip())
    assert outputs == {str(block_hashes(range(64), 16, salt=7))}


def test_block_structure_matches_vllm() -> None:
    """vLLM 0.29's own block hasher agrees on how many leading blocks two prompts share."""
    kv_cache_utils = pytest.importorskip("vllm.v1.core.kv_cache_utils")
    from vllm.utils.hashing import sha256

    kv_cache_utils.init_none_hash(sha256)

    def vllm_hashes(tokens: Sequence[int]) -> list[bytes]:
        parent = None
        out = []
        for end in range(16, len(tokens) + 1, 16):
            parent = kv_cache_utils.hash_block_tokens(sha256, parent, tokens[end - 16 : end])
            out.append(parent)
        return out

    def shared(a: Sequence[object], b: Sequence[object]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    base = list(range(100, 200))
    for variant in ([*base[:40], 7, *base[40:]], base[:16] + [9] * 84, base + [1] * 30, [5, *base]):
        assert shared(block_hashes(base, 16), block_hashes(variant, 16)) == shared(
            vllm_hashes(base), vllm_hashes(variant)
        )


# --- the index -----------------------------------------------------------------------------


class NaiveIndex:
    """Reference: one ordered dict of (hash, replica), touched deepest block first, LRU eviction."""

    def __init__(self, max_blocks: int, stride: int = 1) -> None:
        self.max_blocks = max_blocks
        self.stride = stride
        self.entries: OrderedDict[tuple[int, str], None] = OrderedDict()

    def insert(self, replica: str, hashes: Sequence[int]) -> int:
        for h in reversed(hashes[self.stride - 1 :: self.stride]):
            self.entries[(h, replica)] = None
            self.entries.move_to_end((h, replica))
        evicted = 0
        while len(self.entries) > self.max_blocks:
            self.entries.popitem(last=False)
            evicted += 1
        return evicted

    def remove_replica(self, replica: str) -> None:
        for key in [k for k in self.entries if k[1] == replica]:
            del self.entries[key]

    def match(self, hashes: Sequence[int], replicas: Sequence[str]) -> dict[str, int]:
        points = hashes[self.stride - 1 :: self.stride]
        out = {}
        for r in replicas:
            depth = 0
            while depth < len(points) and (points[depth], r) in self.entries:
                depth += 1
            out[r] = depth * self.stride
        return out


REPLICAS = ["a", "b", "c"]
hash_lists = st.lists(st.integers(-3, 12), max_size=8)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(REPLICAS), hash_lists),
        st.tuples(st.just("remove"), st.sampled_from(REPLICAS), st.just([])),
        st.tuples(st.just("match"), st.just(""), hash_lists),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(max_blocks=st.integers(1, 12), stride=st.sampled_from([1, 1, 2, 3]), ops=operations)
def test_index_behaves_like_the_naive_reference(
    max_blocks: int, stride: int, ops: list[tuple[str, str, list[int]]]
) -> None:
    """LRU bound never exceeded, evictions counted, removals forget everything, match exact
    (with a stride: exact over every stride-th block, in blocks)."""
    index, naive = PrefixIndex(max_blocks, stride=stride), NaiveIndex(max_blocks, stride)
    for op, replica, hashes in ops:
        if op == "insert":
            assert index.insert(replica, hashes) == naive.insert(replica, hashes)
        elif op == "remove":
            index.remove_replica(replica)
            naive.remove_replica(replica)
            assert replica not in index.replicas()
            assert index.match(hashes or [0, 1, 2], [replica]) == {replica: 0}
        else:
            assert index.match(hashes, [*REPLICAS, "never-seen"]) == naive.match(hashes, [*REPLICAS, "never-seen"])
        assert len(index) == len(naive.entries) <= max_blocks
        assert index.replicas() == {r for _, r in naive.entries}


def test_eviction_trims_a_prefix_from_its_tail() -> None:
    index = PrefixIndex(6, stride=1)
    index.insert("a", [1, 2, 3, 4])
    index.insert("b", [9, 8, 7])  # one entry over: a's deepest block goes first
    assert index.match([1, 2, 3, 4], ["a"]) == {"a": 3}
    assert index.match([9, 8, 7], ["b"]) == {"b": 3}


def test_remove_replica_forgets_all_of_it_and_keeps_the_rest() -> None:
    index = PrefixIndex(100, stride=1)
    shared = list(range(10))
    index.insert("a", shared)
    index.insert("b", shared[:5])
    index.remove_replica("a")
    assert index.match(shared, ["a", "b"]) == {"a": 0, "b": 5}
    assert index.replicas() == {"b"}
    assert len(index) == 5
    index.remove_replica("gone-already")  # unknown replicas are fine
    index.insert("a", shared[:2])  # a replica may come back under the same name
    assert index.match(shared, ["a"]) == {"a": 2}


def test_match_is_a_read_not_a_use() -> None:
    index = PrefixIndex(4, stride=1)
    index.insert("a", [1, 2])
    index.insert("b", [3, 4])
    index.match([1, 2], ["a"])
    index.insert("c", [5, 6])  # evicts a's entries: the match did not refresh them
    assert index.match([1, 2], ["a"]) == {"a": 0}
    assert index.match([3, 4], ["b"]) == {"b": 2}


def test_a_stride_of_four_indexes_every_fourth_block() -> None:
    index = PrefixIndex(1000, stride=4)
    prompt = block_hashes(range(16 * 10), 16)  # 10 blocks: indexed at blocks 4 and 8
    index.insert("a", prompt)
    assert len(index) == 2
    assert index.match(prompt, ["a"]) == {"a": 8}
    longer = block_hashes([*range(16 * 10), *range(500, 500 + 16 * 6)], 16)
    assert index.match(longer, ["a", "b"]) == {"a": 8, "b": 0}
    assert index.match(prompt[:3], ["a"]) == {"a": 0}  # shorter than one stride: nothing to match
