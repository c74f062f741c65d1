"""Which replica gets a request: prefix affinity within a load bound. Pure (no Ray, no clock).

Signal: for each candidate replica, the leading prompt blocks it holds (`PrefixIndex.match`),
the requests it has ongoing as the router sees them, and the prefill work the router sent it
that is not done yet (`PrefillBacklog`). Each replica gets an expected cost in seconds of time
to first token:

    cost = prefill(uncached prompt tokens) + prefill_backlog_s + queued x queue_s_per_request
    prefill(n) = max(prefill_floor_s, n x prefill_s_per_token)

The defaults are an H100's for a Llama-3-8B-shaped model (measured: ~32k prompt tokens/s from
2k tokens up, and a ~20 ms floor that covers any prefill of 512 tokens or fewer).

The *preferred* replica is the one holding the longest prefix (ties: the cheaper, then at
random). It keeps the request (affinity) while its cost is at most `max_load_ratio` times the
cheapest replica's; otherwise the request goes to the cheapest replica (fallback; ties at
random, so with no prefix anywhere it is the least loaded). A hot shared system prompt
therefore spreads: once its holder's queue makes it more than `max_load_ratio` dearer than a
replica that would have to prefill the prompt, the next request goes there, that replica then
holds the prompt too, and from then on the holders share the load as equals.

Costs are compared as ratios, so `prefill_floor_s` also keeps two nearly idle replicas (costs
near zero) from looking infinitely unequal.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A Llama-3-8B-shaped bf16 model on one H100 prefills ~31-33k tokens/s from 2k tokens up and
# takes ~20 ms for any prompt of 512 tokens or fewer (h100-costmodel.json of the measurements).
H100_8B_PREFILL_S_PER_TOKEN = 1 / 32_000
H100_8B_PREFILL_FLOOR_S = 0.020
# What each ongoing request adds to a new one's time to first token there.
H100_8B_QUEUE_S_PER_REQUEST = 0.010


@dataclass(frozen=True)
class ReplicaLoad:
    """A candidate replica and its requests ongoing or queued as the router sees them."""

    replica: str
    queued: int
    # Seconds of prefill sent to the replica and not yet done, by `PrefillBacklog`.
    prefill_backlog_s: float = 0.0


@dataclass(frozen=True)
class RoutingParams:
    """Knobs of the policy; `max_load_ratio` is `spec.routing.maxLoadRatio`."""

    # Engine KV-cache block size in tokens (vLLM's `block_size`).
    block_size: int
    # Affinity holds while the preferred replica costs at most this multiple of the cheapest.
    max_load_ratio: float = 1.5
    # Seconds per uncached prompt token, and the least a prefill takes.
    prefill_s_per_token: float = H100_8B_PREFILL_S_PER_TOKEN
    prefill_floor_s: float = H100_8B_PREFILL_FLOOR_S
    # Seconds each ongoing request at a replica adds to a new request's time to first token.
    queue_s_per_request: float = H100_8B_QUEUE_S_PER_REQUEST

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be a positive number of tokens, got {self.block_size}")
        if self.max_load_ratio < 1.0:
            raise ValueError(f"max_load_ratio must be at least 1.0, got {self.max_load_ratio}")
        if self.prefill_s_per_token < 0 or self.prefill_floor_s <= 0 or self.queue_s_per_request < 0:
            raise ValueError(
                "prefill_s_per_token and queue_s_per_request must be >= 0 and prefill_floor_s > 0, got "
                f"{self.prefill_s_per_token}, {self.queue_s_per_request}, {self.prefill_floor_s}"
            )


@dataclass(frozen=True)
class Decision:
    replica: str
    # Leading prompt blocks the chosen replica holds, as the index believes.
    matched_blocks: int
    # True when the prefix match decided, False when load did (fallback).
    affinity: bool


def choose(
    prompt_blocks: int,
    matches: Mapping[str, int],
    loads: Sequence[ReplicaLoad],
    params: RoutingParams,
    rng: random.Random,
) -> Decision:
    """The replica for a prompt of `prompt_blocks` full blocks; `matches` from `PrefixIndex.match`."""
    if not loads:
        raise ValueError("no candidate replicas to choose from")
    block_tokens = params.block_size * params.prefill_s_per_token
    floor = params.prefill_floor_s
    per_request = params.queue_s_per_request
    cheapest: list[ReplicaLoad] = []
    cheapest_cost = float("inf")
    preferred: list[ReplicaLoad] = []
    preferred_cost = float("inf")
    best_match = 0
    for load in loads:
        matched = min(matches.get(load.replica, 0), prompt_blocks)
        prefill = (prompt_blocks - matched) * block_tokens
        cost = (prefill if prefill > floor else floor) + load.queued * per_request + load.prefill_backlog_s
        if cost < cheapest_cost:
            cheapest, cheapest_cost = [load], cost
        elif cost == cheapest_cost:
            cheapest.append(load)
        if matched > best_match or (matched == best_match and cost < preferred_cost):
            preferred, preferred_cost, best_match = [load], cost, matched
        elif matched == best_match and cost == preferred_cost:
            preferred.append(load)
    if best_match > 0 and preferred_cost <= params.max_load_ratio * cheapest_cost:
        pick = preferred[0] if len(preferred) == 1 else rng.choice(preferred)
        return Decision(pick.replica, best_match, affinity=True)
    pick = cheapest[0] if len(cheapest) == 1 else rng.choice(cheapest)
    return Decision(pick.replica, min(matches.get(pick.replica, 0), prompt_blocks), affinity=False)


class PrefillBacklog:
    """Prefill work each replica was sent and has not yet done, in seconds, drained in real time.

    A count of ongoing requests cannot tell a replica that just took a 6k-token prompt (busy
    prefilling for the next ~200 ms) from one decoding a few short answers. The router knows
    what it sent: each placement adds the expected prefill of its uncached tokens, and a
    replica works its backlog off at one second per second; none is left once nothing is
    ongoing anywhere (`loads`). Pure: the caller passes the time.
    """

    def __init__(self, params: RoutingParams) -> None:
        self._params = params
        self._backlog: dict[str, tuple[float, float]] = {}  # replica -> (seconds, as of)

    def backlog_s(self, replica: str, now: float) -> float:
        entry = self._backlog.get(replica)
        if entry is None:
            return 0.0
        left = entry[0] - (now - entry[1])
        return left if left > 0.0 else 0.0

    def add(self, replica: str, uncached_tokens: int, now: float) -> None:
        """A request with this many uncached prompt tokens was placed on `replica` at `now`."""
        prefill = max(self._params.prefill_floor_s, uncached_tokens * self._params.prefill_s_per_token)
        self._backlog[replica] = (self.backlog_s(replica, now) + prefill, now)

    def loads(self, queued: Mapping[str, int], now: float) -> list[ReplicaLoad]:
        """The candidates' loads for `choose`, from their requests ongoing as the router sees them.

        With nothing ongoing at any candidate, every prefill the router sent is done, whatever
        the estimate still says (the per-token cost is one figure per accelerator, and a faster
        replica works its backlog off sooner), and there is no load to balance: the backlog
        is dropped, so one client's sequential repeats stay with the replica that holds their
        prefix. While anything is in flight it stays: it also spreads recent work, which a
        per-replica reset lost (benchmarks/routing_engine.py put 65 of 100 requests on one
        replica and lost 2 points of hit rate with it).
        """
        if not any(count > 0 for count in queued.values()):
            self._backlog.clear()
            return [ReplicaLoad(replica, 0) for replica in queued]
        return [ReplicaLoad(replica, count, self.backlog_s(replica, now)) for replica, count in queued.items()]

    def forget(self, replica: str) -> None:
        self._backlog.pop(replica, None)
