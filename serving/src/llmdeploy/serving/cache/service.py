"""`ResponseCache`: a backend plus the rule that a cache problem is never a request error.

Every backend call goes through here. A `BackendError` (or any exception from the backend)
marks the backend down: the lookup or store is skipped (the request is served by the engine),
`backend_errors` counts it, the `backend_up` gauge drops to 0, and one warning is logged per
`log_interval_s`. While down, requests do not wait on the backend at all; after `retry_after_s`
the next request tries it again, and a success brings the gauge back to 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from llmdeploy.serving.cache.backends import CacheBackend

# Seconds between tries of a backend that failed.
RETRY_AFTER_S: Final = 2.0
# Seconds between two warnings about a failing backend.
LOG_INTERVAL_S: Final = 60.0

_logger = logging.getLogger("ray.serve")


class Result(StrEnum):
    """The `result` tag of `llmdeploy_response_cache_requests`."""

    HIT = "hit"
    MISS = "miss"
    # Not looked up: not cacheable (sampled, non-cacheable endpoint), asked not to, or backend down.
    BYPASS = "bypass"


class CacheMetrics(Protocol):
    def request(self, result: Result) -> None: ...
    def evicted(self, count: int) -> None: ...
    def tokens_saved(self, count: int) -> None: ...
    def backend_up(self, up: bool) -> None: ...
    def backend_error(self) -> None: ...


class NullMetrics:
    """Metrics that go nowhere (tests, benchmarks without Ray)."""

    def request(self, result: Result) -> None:
        pass

    def evicted(self, count: int) -> None:
        pass

    def tokens_saved(self, count: int) -> None:
        pass

    def backend_up(self, up: bool) -> None:
        pass

    def backend_error(self) -> None:
        pass


@dataclass(frozen=True)
class Lookup:
    value: bytes | None
    # False when the backend was skipped or failed: the request is a bypass, not a miss.
    available: bool


class ResponseCache:
    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl_s: int,
        metrics: CacheMetrics | None = None,
        retry_after_s: float = RETRY_AFTER_S,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        name: str = "response cache",
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.metrics: CacheMetrics = metrics or NullMetrics()
        self._retry_after_s = retry_after_s
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._name = name
        self._down_until: float | None = None
        self._logged_at: float | None = None
        self.up: bool | None = None

    def _available(self) -> bool:
        return self._down_until is None or self._clock() >= self._down_until

    def _failed(self, what: str, err: BaseException) -> None:
        now = self._clock()
        self._down_until = now + self._retry_after_s
        self.metrics.backend_error()
        self._set_up(False)
        if self._logged_at is None or now - self._logged_at >= self._log_interval_s:
            self._logged_at = now
            _logger.warning(
                "%s backend unavailable (%s: %s); serving uncached, retrying every %.0f s",
                self._name,
                what,
                err,
                self._retry_after_s,
            )

    def _succeeded(self) -> None:
        if self._down_until is not None:
            _logger.info("%s backend is back", self._name)
        self._down_until = None
        self._set_up(True)

    def _set_up(self, up: bool) -> None:
        if self.up is not up:
            self.up = up
            self.metrics.backend_up(up)

    async def get(self, key: str) -> Lookup:
        if not self._available():
            return Lookup(None, available=False)
        try:
            value = await self.backend.get(key)
        except Exception as err:  # any backend failure degrades to uncached serving
            self._failed("get", err)
            return Lookup(None, available=False)
        self._succeeded()
        return Lookup(value, available=True)

    async def put(self, key: str, value: bytes) -> bool:
        """Store `value`; False (never an exception) when the backend could not."""
        if not self._available():
            return False
        try:
            evicted = await self.backend.set(key, value, self.ttl_s)
        except Exception as err:
            self._failed("set", err)
            return False
        self._succeeded()
        if evicted:
            self.metrics.evicted(evicted)
        return True

    async def check(self) -> bool:
        """Ping the backend and update the gauge (at start and by a periodic probe)."""
        try:
            ok = await self.backend.ping()
        except Exception as err:
            self._failed("ping", err)
            return False
        if ok:
            self._succeeded()
        else:
            self._failed("ping", RuntimeError("no answer"))
        return ok

    async def close(self) -> None:
        try:
            await self.backend.close()
        except Exception as err:
            _logger.info("closing the %s backend failed: %s", self._name, err)
