"""The routing view every router instance shares: a bounded log of placements.

Each ingress replica (and any other handle to the engine deployment) runs its own router. A
router decides from its local `PrefixIndex` (microseconds, no remote call on the request path)
and, every `sync_interval_s`, exchanges what it placed since the last exchange with one
`PrefixLog` actor per deployment: it sends its placements and receives everyone else's. Every
router therefore converges on the same view within one interval, and the log's bound keeps
the actor's memory fixed however many routers there are; a router that falls further behind
than the log holds simply misses those placements (it then sends more traffic by load until
it learns them again), which `Exchange.lagged` reports.

Ray's `PrefixCacheAffinityRouter` instead asks a shared prefix-tree actor on every request
(a blocking remote call per decision); see docs/architecture.md for the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# One entry per routed request: (replica id, the request's chained block hashes).
Placement = tuple[str, tuple[int, ...]]

DEFAULT_LOG_CAPACITY: Final = 50_000


@dataclass(frozen=True)
class Exchange:
    """What a router receives: the newest sequence number and others' placements after its last."""

    seq: int
    placements: list[Placement] = field(default_factory=list)
    # The router asked from before the oldest entry still held: it missed some placements.
    lagged: bool = False


class PrefixLog:
    """A bounded, sequence-numbered log of placements from every router. Pure; the actor wraps it.

    Sequence numbers are contiguous, so an exchange reads only the entries newer than the
    caller's last one (a dict keyed by sequence number), never the whole log.
    """

    def __init__(self, capacity: int = DEFAULT_LOG_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._entries: dict[int, tuple[str, Placement]] = {}
        self._seq = 0

    @property
    def seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._entries)

    def exchange(self, source: str, after: int, placements: list[Placement]) -> Exchange:
        """Append `source`'s placements; return the others' placements newer than `after`."""
        oldest = self._seq - len(self._entries) + 1
        start = max(after + 1, oldest)
        lagged = after + 1 < oldest
        news: list[Placement] = []
        for seq in range(start, self._seq + 1):
            origin, placement = self._entries[seq]
            if origin != source:
                news.append(placement)
        for placement in placements:
            self._seq += 1
            self._entries[self._seq] = (source, placement)
            self._entries.pop(self._seq - self._capacity, None)
        return Exchange(seq=self._seq, placements=news, lagged=lagged)


class PrefixLogActor:
    """The Ray actor around `PrefixLog` (made remote by the router, so this module needs no Ray)."""

    def __init__(self, capacity: int = DEFAULT_LOG_CAPACITY) -> None:
        self._log = PrefixLog(capacity)

    def exchange(self, source: str, after: int, placements: list[Placement]) -> Exchange:
        return self._log.exchange(source, after, placements)
