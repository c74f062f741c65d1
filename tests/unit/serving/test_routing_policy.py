"""The routing policy keeps prefix affinity within the load bound and spreads a hot prompt."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmdeploy.serving.routing.index import PrefixIndex, block_hashes
from llmdeploy.serving.routing.policy import Decision, PrefillBacklog, ReplicaLoad, RoutingParams, choose

PARAMS = RoutingParams(block_size=16, max_load_ratio=1.5)
REPLICAS = ["a", "b", "c", "d"]


def loads(**queued: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(r, queued.get(r, 0)) for r in REPLICAS]


def test_affinity_when_balanced() -> None:
    decision = choose(128, {"b": 120}, loads(a=2, b=2, c=2, d=2), PARAMS, random.Random(0))
    assert decision == Decision("b", 120, affinity=True)


def test_affinity_survives_a_moderately_longer_queue() -> None:
    # b holds 1,920 of 2,048 tokens (cost ~0.03 s + queue) against a full 64 ms prefill elsewhere.
    decision = choose(128, {"b": 120}, loads(a=0, b=5, c=0, d=0), PARAMS, random.Random(0))
    assert decision.replica == "b"
    assert decision.affinity


def test_fallback_when_the_preferred_replica_is_over_the_bound() -> None:
    decision = choose(128, {"b": 120}, loads(a=1, b=40, c=0, d=3), PARAMS, random.Random(0))
    assert decision == Decision("c", 0, affinity=False)


def test_a_higher_bound_keeps_affinity_longer() -> None:
    patient = RoutingParams(block_size=16, max_load_ratio=10.0)
    decision = choose(128, {"b": 120}, loads(a=1, b=40, c=0, d=3), patient, random.Random(0))
    assert decision.replica == "b"
    assert decision.affinity


def test_fallback_prefers_a_replica_with_a_partial_prefix() -> None:
    """Costs count each replica's own cached blocks: the cheapest may be a partial holder."""
    decision = choose(256, {"a": 250, "c": 200}, loads(a=60, b=2, c=2, d=2), PARAMS, random.Random(0))
    assert decision == Decision("c", 200, affinity=False)


def test_no_prefix_anywhere_goes_to_the_least_loaded() -> None:
    decision = choose(64, {}, loads(a=3, b=1, c=2, d=5), PARAMS, random.Random(0))
    assert decision == Decision("b", 0, affinity=False)


def test_matches_longer_than_the_prompt_are_clipped() -> None:
    decision = choose(10, {"a": 50}, loads(), PARAMS, random.Random(0))
    assert decision == Decision("a", 10, affinity=True)


def test_ties_are_random_but_seeded() -> None:
    def picks(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [choose(8, {}, loads(), PARAMS, rng).replica for _ in range(200)]

    assert picks(1) == picks(1)
    assert picks(1) != picks(2)
    assert set(picks(1)) == set(REPLICAS)
    # Equal holders of the longest prefix are tied too.
    rng = random.Random(3)
    holders = {choose(8, {"a": 8, "c": 8}, loads(), PARAMS, rng).replica for _ in range(100)}
    assert holders == {"a", "c"}


def test_hot_prompt_spreads_across_replicas() -> None:
    """Every request shares one 2,048-token system prompt; none finishes. The prompt's holder
    fills up, the others take it over, and the load stays within the bound."""
    index = PrefixIndex(100_000)
    rng = random.Random(7)
    system = list(range(2048))
    queued = dict.fromkeys(REPLICAS, 0)
    affinity = 0
    for k in range(400):
        hashes = block_hashes(system + [10_000 + k] * 200, 16)
        current = [ReplicaLoad(r, q) for r, q in queued.items()]
        decision = choose(len(hashes), index.match(hashes, REPLICAS), current, PARAMS, rng)
        index.insert(decision.replica, hashes)
        queued[decision.replica] += 1
        affinity += decision.affinity
    assert all(index.match(block_hashes(system, 16), REPLICAS)[r] == 128 for r in REPLICAS)
    counts = Counter(queued)
    assert max(queued.values()) <= 1.25 * (sum(queued.values()) / len(REPLICAS))
    assert affinity >= 390  # once every replica holds the prompt, the holders share it
    assert len(counts) == len(REPLICAS)


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidate replicas"):
        choose(4, {}, [], PARAMS, random.Random(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": 16, "max_load_ratio": 0.5}, "max_load_ratio"),
        ({"block_size": 16, "prefill_floor_s": 0.0}, "prefill_floor_s"),
        ({"block_size": 16, "queue_s_per_request": -1.0}, "queue_s_per_request"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingParams(**kwargs)  # type: ignore[arg-type]


def test_prefill_backlog_adds_up_and_drains_in_real_time() -> None:
    backlog = PrefillBacklog(PARAMS)
    assert backlog.backlog_s("a", 0.0) == 0.0
    backlog.add("a", 6_400, now=10.0)  # 0.2 s of prefill at 32k tokens/s
    backlog.add("a", 0, now=10.0)  # a fully cached prompt still costs the 20 ms floor
    assert backlog.backlog_s("a", 10.0) == pytest.approx(0.22)
    assert backlog.backlog_s("a", 10.1) == pytest.approx(0.12)
    assert backlog.backlog_s("a", 11.0) == 0.0
    backlog.add("a", 3_200, now=11.0)  # what drained is gone, not owed
    assert backlog.backlog_s("a", 11.0) == pytest.approx(0.1)
    backlog.forget("a")
    assert backlog.backlog_s("a", 11.0) == 0.0


def test_backlog_steers_away_from_a_replica_busy_prefilling() -> None:
    """Same queue lengths, no prefix anywhere: the replica that just took a long prompt is avoided."""
    rng = random.Random(0)
    busy = [ReplicaLoad(r, 1, 0.3 if r != "c" else 0.0) for r in REPLICAS]
    assert choose(64, {}, busy, PARAMS, rng) == Decision("c", 0, affinity=False)
