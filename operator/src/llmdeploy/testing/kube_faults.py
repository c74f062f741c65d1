"""Seeded fault injection for the Kubernetes API emulator (off unless a plan is set).

A :class:`FaultPlan` decides, per request and from its own seeded random stream, whether to
answer with an error (409 only where a real apiserver can conflict: creates and replaces that
carry a resourceVersion; a merge patch without one never conflicts, and clients such as kopf
rely on that; 429 carries ``Retry-After``), to delay the answer,
or to cut a watch stream after a while. An injected error is answered before the request
reaches the store, so the write it refuses does not happen (a real apiserver may commit and
still time out; that case is not simulated).
"""

from __future__ import annotations

import collections
import random
import threading
from dataclasses import dataclass, field

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Verbs a real apiserver answers with 409: a create of an existing name, a replace (PUT) whose
# resourceVersion is stale.
CONFLICTING_VERBS = frozenset({"create", "update"})


@dataclass(frozen=True)
class FaultDecision:
    status: int | None = None  # answer with this error instead of serving
    delay: float = 0.0  # seconds to wait before serving (or before the error)
    drop_after: float | None = None  # for watches: abort the connection after this many seconds

    @property
    def label(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"error:{self.status}")
        if self.delay:
            parts.append("delay")
        if self.drop_after is not None:
            parts.append("drop")
        return "+".join(parts)


@dataclass
class FaultPlan:
    """Rates and shapes of injected faults; every rate is a probability per eligible request."""

    seed: int = 0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (409, 429, 500, 503)
    retry_after_seconds: int = 1
    delay_rate: float = 0.0
    delay_range: tuple[float, float] = (0.05, 0.25)
    watch_drop_rate: float = 0.0
    watch_drop_after: tuple[float, float] = (0.05, 1.0)
    verbs: frozenset[str] | None = None  # only these RBAC verbs are eligible (None: all)
    user_agent_prefix: str | None = None  # only requests from this client (e.g. "kopf/")
    include_discovery: bool = False  # non-resource URLs (/api, /apis, /version, ...)
    injected: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def decide(self, *, verb: str | None, user_agent: str) -> FaultDecision | None:
        """The faults for one request, or None to serve it normally."""
        if verb is None and not self.include_discovery:
            return None
        if self.verbs is not None and verb not in self.verbs:
            return None
        if self.user_agent_prefix is not None and not user_agent.startswith(self.user_agent_prefix):
            return None
        with self._lock:
            status = None
            if self.error_rate and self._rng.random() < self.error_rate:
                allowed = [s for s in self.error_statuses if s != 409 or verb in CONFLICTING_VERBS]
                status = self._rng.choice(allowed) if allowed else None
            delay = 0.0
            if self.delay_rate and self._rng.random() < self.delay_rate:
                delay = self._rng.uniform(*self.delay_range)
            drop_after = None
            if (
                verb == "watch"
                and status is None
                and self.watch_drop_rate
                and self._rng.random() < self.watch_drop_rate
            ):
                drop_after = self._rng.uniform(*self.watch_drop_after)
            decision = FaultDecision(status, delay, drop_after)
            if not decision.label:
                return None
            self.injected[decision.label] += 1
            return decision
