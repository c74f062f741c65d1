"""One router's view of where prefixes live: the index, its outbox to the shared log, and what it forgot.

Pure (no Ray): `router.PrefixAwareRouter` holds one `RoutingView` and calls it from Ray's
request-router hooks; the unit tests drive it directly.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from llmdeploy.serving.routing.index import PrefixIndex
from llmdeploy.serving.routing.policy import Decision, PrefillBacklog, RoutingParams, choose
from llmdeploy.serving.routing.shared import Placement

# Placements kept for the shared log while it is unreachable; older ones are dropped.
MAX_OUTBOX: Final = 10_000
# The index keeps one entry per this many prompt tokens (at least every block): with GPU blocks
# of 16 tokens every fourth block, which keeps decisions within the latency goal at 100k
# entries (benchmarks/routing.py) and loses nothing that matters to a cost of whole prefills.
INDEX_GRANULARITY_TOKENS: Final = 64
# Replicas remembered as gone, so a late placement from another router does not revive them.
MAX_FORGOTTEN: Final = 1_024


class RoutingView:
    def __init__(self, params: RoutingParams, max_blocks: int, *, seed: int | None = None) -> None:
        self.params = params
        self.index = PrefixIndex(max_blocks, stride=max(1, INDEX_GRANULARITY_TOKENS // params.block_size))
        self.backlog = PrefillBacklog(params)
        self._rng = random.Random(seed)
        self._outbox: deque[Placement] = deque(maxlen=MAX_OUTBOX)
        self._forgotten: deque[str] = deque(maxlen=MAX_FORGOTTEN)

    def decide(self, hashes: Sequence[int], queued: Mapping[str, int], now: float) -> Decision:
        """Where a prompt of these block hashes should go, given each candidate's ongoing requests."""
        matches = self.index.match(hashes, queued)
        return choose(len(hashes), matches, self.backlog.loads(queued, now), self.params, self._rng)

    def placed(
        self, replica: str, hashes: Sequence[int], *, matched_blocks: int, prompt_tokens: int, now: float
    ) -> None:
        """A request went to `replica`: it now holds (or soon will) these blocks, and prefills the rest."""
        self.backlog.add(replica, max(0, prompt_tokens - matched_blocks * self.params.block_size), now)
        if not hashes:
            return
        self.index.insert(replica, hashes)
        self._outbox.append((replica, tuple(hashes)))

    def learn(self, placements: Iterable[Placement]) -> None:
        """Placements other routers made (from the shared log)."""
        forgotten = set(self._forgotten)
        for replica, hashes in placements:
            if replica not in forgotten:
                self.index.insert(replica, hashes)

    def forget(self, replicas: Iterable[str]) -> None:
        """Replicas that went away: drop their blocks, and ignore late placements to them."""
        for replica in replicas:
            self.index.remove_replica(replica)
            self.backlog.forget(replica)
            self._forgotten.append(replica)

    def take_outbox(self) -> list[Placement]:
        items = list(self._outbox)
        self._outbox.clear()
        return items

    def return_outbox(self, placements: list[Placement]) -> None:
        """An exchange failed: keep these for the next one (oldest first, bounded)."""
        pending = list(self._outbox)
        self._outbox.clear()
        self._outbox.extend(placements)
        self._outbox.extend(pending)
