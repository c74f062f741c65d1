"""Cache backends: the in-process memory cache, and Redis against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from llmdeploy.serving.cache.backends import BackendError, MemoryBackend, RedisBackend
from llmdeploy.serving.cache.service import ResponseCache, Result
from llmdeploy.testing.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded:
    """CacheMetrics that remembers what it was told."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.evictions = 0
        self.saved = 0
        self.up: list[bool] = []
        self.errors = 0

    def request(self, result: Result) -> None:
        self.results.append(result)

    def evicted(self, count: int) -> None:
        self.evictions += count

    def tokens_saved(self, count: int) -> None:
        self.saved += count

    def backend_up(self, up: bool) -> None:
        self.up.append(up)

    def backend_error(self) -> None:
        self.errors += 1


async def test_memory_backend_stores_and_expires_entries() -> None:
    clock = Clock()
    backend = MemoryBackend(max_entries=10, timer=clock)
    assert await backend.get("a") is None
    assert await backend.set("a", b"1", 60) == 0
    assert await backend.get("a") == b"1"
    clock.now += 59
    assert await backend.get("a") == b"1"
    clock.now += 2
    assert await backend.get("a") is None
    assert len(backend) == 0


async def test_memory_backend_evicts_least_recently_used_and_counts_it() -> None:
    clock = Clock()
    backend = MemoryBackend(max_entries=2, timer=clock)
    await backend.set("a", b"1", 60)
    await backend.set("b", b"2", 60)
    await backend.get("a")  # a is now more recently used than b
    assert await backend.set("c", b"3", 60) == 1
    assert await backend.get("b") is None
    assert await backend.get("a") == b"1"
    assert await backend.get("c") == b"3"
    # Expiry is not eviction: expired entries make room without counting.
    clock.now += 120
    assert await backend.set("d", b"4", 60) == 0
    assert await backend.set("e", b"5", 60) == 0
    assert len(backend) == 2


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_backend(redis_server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[RedisBackend]:
    redis_server.start()
    backend = RedisBackend(redis_server.url, namespace=request.node.name, max_entries=3)
    yield backend
    await backend.close()


async def test_redis_backend_stores_and_reads_entries(redis_backend: RedisBackend) -> None:
    assert await redis_backend.ping()
    assert await redis_backend.get("k") is None
    assert await redis_backend.set("k", b'{"x": 1}', 60) == 0
    assert await redis_backend.get("k") == b'{"x": 1}'


async def test_redis_entries_expire_with_their_ttl(redis_backend: RedisBackend) -> None:
    await redis_backend.set("short", b"v", 1)
    assert await redis_backend.get("short") == b"v"
    await asyncio.sleep(1.3)
    assert await redis_backend.get("short") is None


async def test_redis_keeps_at_most_max_entries_evicting_least_recently_used(redis_backend: RedisBackend) -> None:
    for name in ("a", "b", "c"):
        assert await redis_backend.set(name, name.encode(), 60) == 0
        await asyncio.sleep(0.01)
    assert await redis_backend.get("a") == b"a"  # a is now more recently used than b
    await asyncio.sleep(0.01)
    assert await redis_backend.set("d", b"d", 60) == 1
    assert await redis_backend.get("b") is None
    assert [await redis_backend.get(n) for n in ("a", "c", "d")] == [b"a", b"c", b"d"]


async def test_two_deployments_sharing_a_redis_have_separate_bounds(redis_server: RedisServer) -> None:
    one = RedisBackend(redis_server.url, namespace="one", max_entries=1)
    two = RedisBackend(redis_server.url, namespace="two", max_entries=1)
    try:
        await one.set("k", b"1", 60)
        assert await two.set("k", b"2", 60) == 0
        assert await one.get("k") == b"1"
        assert await two.get("k") == b"2"
    finally:
        await one.close()
        await two.close()


async def test_a_stopped_redis_degrades_to_uncached_and_recovers(redis_server: RedisServer) -> None:
    clock = Clock()
    metrics = Recorded()
    backend = RedisBackend(redis_server.url, namespace="degrade", max_entries=10)
    cache = ResponseCache(backend, ttl_s=60, metrics=metrics, retry_after_s=5.0, clock=clock)
    try:
        assert await cache.check()
        assert await cache.put("k", b"v")
        assert (await cache.get("k")).value == b"v"
        assert metrics.up == [True]

        redis_server.stop()
        with pytest.raises(BackendError):
            await backend.get("k")
        lookup = await cache.get("k")
        assert lookup.value is None
        assert not lookup.available
        assert not await cache.put("k2", b"v2")  # skipped while down: no exception, no wait
        assert metrics.up == [True, False]
        assert metrics.errors == 1

        redis_server.start()
        # Still inside the retry window: the backend is not asked.
        assert not (await cache.get("k")).available
        clock.now += 5.0
        lookup = await cache.get("k")
        assert lookup.available
        assert lookup.value is None  # the restarted server kept nothing (no persistence)
        assert await cache.put("k", b"again")
        assert (await cache.get("k")).value == b"again"
        assert metrics.up == [True, False, True]
    finally:
        redis_server.start()
        await cache.close()


async def test_the_response_cache_reports_evictions(redis_server: RedisServer) -> None:
    metrics = Recorded()
    cache = ResponseCache(MemoryBackend(max_entries=1), ttl_s=60, metrics=metrics)
    await cache.put("a", b"1")
    await cache.put("b", b"2")
    assert metrics.evictions == 1
