"""The `memory` backend shared by every ingress replica: a `MemoryBackend` inside one Ray actor.

With one ingress replica, the replica's own `MemoryBackend` is the shared cache and costs no
hop. When the ingress may run several replicas, each would otherwise hold its own cache (hit
rate divided by the replica count, memory multiplied), so they all talk to one named actor per
deployment instead (`get_if_exists`: the first replica creates it, the others find it). The
actor is detached so that it outlives any single ingress replica; it lives as long as the Ray
cluster (a RayService upgrade starts a new cluster, hence an empty cache, as `memory`
documents). It asks for no CPU: it only moves bytes.
"""

from __future__ import annotations

from typing import Any, Final

from llmdeploy.serving.cache.backends import BackendError, MemoryBackend

NAMESPACE: Final = "llmdeploy"
# Seconds an actor call may take before the lookup counts as a backend failure.
ACTOR_TIMEOUT_S: Final = 0.5
# The first call may wait for the actor's process to start (the ingress pings it at start).
ACTOR_START_TIMEOUT_S: Final = 60.0


def actor_name(deployment: str) -> str:
    return f"llmdeploy-response-cache-{deployment}"


class _CacheActor:
    def __init__(self, max_entries: int) -> None:
        self._backend = MemoryBackend(max_entries=max_entries)

    async def get(self, key: str) -> bytes | None:
        return await self._backend.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int) -> int:
        return await self._backend.set(key, value, ttl_s)

    def size(self) -> int:
        return len(self._backend)

    def ping(self) -> bool:
        return True


class SharedMemoryBackend:
    """`CacheBackend` over the deployment's cache actor (created on first use)."""

    def __init__(self, *, deployment: str, max_entries: int, timeout_s: float = ACTOR_TIMEOUT_S) -> None:
        import ray

        remote: Any = ray.remote
        actor_cls: Any = remote(_CacheActor)
        self._actor: Any = actor_cls.options(
            name=actor_name(deployment),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=64,
        ).remote(max_entries)
        self._timeout_s = timeout_s
        self._started = False

    async def _call(self, method: str, *args: Any) -> Any:
        import asyncio

        import ray.exceptions

        timeout_s = self._timeout_s if self._started else ACTOR_START_TIMEOUT_S
        try:
            result = await asyncio.wait_for(getattr(self._actor, method).remote(*args), timeout_s)
        except (TimeoutError, ray.exceptions.RayError) as err:
            raise BackendError(f"cache actor {method} failed: {type(err).__name__}: {err}") from err
        self._started = True
        return result

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> int:
        return int(await self._call("set", key, value, ttl_s))

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping"))
        except BackendError:
            return False

    async def size(self) -> int:
        return int(await self._call("size"))

    async def close(self) -> None:
        """The actor is shared: it stays for the other replicas."""
