"""The router's background exchange never outlives the driver's Ray connection.

Ray Serve builds a router in every process that holds a handle to the engine deployment, test
drivers and `llmdeploy serve` included, and runs it on a thread that survives `ray.shutdown()`.
A Ray call from there after the shutdown would silently start a new local cluster.
"""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID  # noqa: E402

from llmdeploy.serving.routing.router import PrefixAwareRouter  # noqa: E402


def test_the_exchange_loop_ends_without_starting_ray_when_disconnected() -> None:
    assert not ray.is_initialized()
    router = PrefixAwareRouter(DeploymentID(name="LLMServer:tiny", app_name="llm"), DeploymentHandleSource.UNKNOWN)
    router.initialize_state(tokenizer_source=None, sync_interval_s=0.01)

    asyncio.run(asyncio.wait_for(router._sync_forever(), timeout=5))

    assert not ray.is_initialized()
