"""Where cached responses live: a small async protocol and its backends.

`CacheBackend` is what the ingress needs: `get`, `set` with a TTL (returning how many entries
were evicted to stay within the size bound), `ping` (health) and `close`. A backend raises
`BackendError` when it cannot answer; `ResponseCache` (in `llmdeploy.serving.cache.service`)
turns that into uncached serving, a metric and a rate-limited log line.

- `MemoryBackend`: `cachetools.TLRUCache` in the process that holds it, bounded by
  `max_entries` with least-recently-used eviction and a TTL per entry. Needs nothing extra.
- `RedisBackend` (`redis.asyncio`): every entry is a Redis string with `EX` (the TTL) and a
  member of one sorted-set index per deployment, scored by last use. The size bound is the
  index: a set that takes the index above `max_entries` deletes the least recently used
  entries in the same Lua script, so the bound holds without touching the Redis server's own
  configuration (a shared Redis's `maxmemory-policy` belongs to its operator, and bounds bytes,
  not entries). Keys carry the deployment name as a hash tag (`{name}`), so the script's keys
  share one slot in Redis Cluster too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import cachetools

if TYPE_CHECKING:
    import redis.asyncio


class BackendError(RuntimeError):
    """The backend cannot answer now (down, timed out, refused); the request goes uncached."""


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl_s: int) -> int:
        """Store `value` for `ttl_s` seconds; return the entries evicted to make room."""

    async def ping(self) -> bool:
        """Whether the backend answers."""

    async def close(self) -> None:
        """Release connections."""


class _CountingTLRU(cachetools.TLRUCache[str, tuple[int, bytes]]):
    """TLRUCache that counts capacity evictions (`popitem`); expiry is not an eviction."""

    evictions = 0

    def popitem(self) -> tuple[str, tuple[int, bytes]]:
        item = super().popitem()
        self.evictions += 1
        return item


def _expires_at(_key: str, value: tuple[int, bytes], now: float) -> float:
    return now + value[0]


class MemoryBackend:
    """An in-process cache: LRU within `max_entries`, each entry with its own TTL.

    The ingress serves from one event loop, so no lock is needed. `timer` is the clock (seconds,
    monotonic); tests pass a fake one.
    """

    def __init__(self, *, max_entries: int, timer: Callable[[], float] = time.monotonic) -> None:
        self._cache = _CountingTLRU(maxsize=max_entries, ttu=_expires_at, timer=timer)

    async def get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        return None if entry is None else entry[1]

    async def set(self, key: str, value: bytes, ttl_s: int) -> int:
        before = self._cache.evictions
        self._cache[key] = (ttl_s, value)
        return self._cache.evictions - before

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)


# KEYS: entry, index. ARGV: value, ttl_s, now, max_entries. Returns the entries evicted.
# Index members older than the TTL are expired entries (their score is their last use, which is
# after they were stored): drop them first, uncounted; then evict the least recently used.
_SET_SCRIPT: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[2])))
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local evicted = 0
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #oldest, 2 do
    evicted = evicted + redis.call('DEL', oldest[i])
  end
end
return evicted
"""

# Seconds a Redis command may take before the request goes uncached (in-cluster Redis answers
# in well under a millisecond; a slow one must not hold requests).
REDIS_TIMEOUT_S: Final = 0.25


class RedisBackend:
    """Entries in Redis with a TTL and an LRU index per deployment (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        max_entries: int,
        timeout_s: float = REDIS_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: a failed command fails the lookup at once, and
        # `ResponseCache` decides when to try again.
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = f"llmdeploy:rc:{{{namespace}}}:"
        self._index = self._prefix + "index"
        self._max_entries = max_entries
        self._clock = clock
        self._set_script: Any = self._client.register_script(_SET_SCRIPT)

    def _entry(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        import redis.exceptions

        entry = self._entry(key)
        try:
            # One round trip: read, and mark the entry used (XX: only if it is indexed).
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(entry)
                pipe.zadd(self._index, {entry: self._clock()}, xx=True)
                value, _ = await pipe.execute()
        except redis.exceptions.RedisError as err:
            raise BackendError(f"redis get failed: {type(err).__name__}: {err}") from err
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> int:
        import redis.exceptions

        try:
            evicted = await self._set_script(
                keys=[self._entry(key), self._index], args=[value, ttl_s, self._clock(), self._max_entries]
            )
        except redis.exceptions.RedisError as err:
            raise BackendError(f"redis set failed: {type(err).__name__}: {err}") from err
        return int(evicted)

    async def ping(self) -> bool:
        import redis.exceptions

        try:
            return bool(await self._client.ping())
        except redis.exceptions.RedisError:
            return False

    async def close(self) -> None:
        await self._client.aclose()
