"""Runs the operator: logging, the handlers, and kopf's main loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import urllib.parse
from collections.abc import AsyncIterator, Sequence

import kopf
from aiohttp import web

from llmdeploy.operator import k8s, leader
from llmdeploy.operator.leader import LeaseConfig


def run(
    *,
    namespaces: Sequence[str] = (),
    standalone: bool = False,
    liveness: str | None = None,
    verbose: bool = False,
    log_format: str = "plain",
    leader_election: LeaseConfig | None = None,
) -> None:
    """Block running the operator; all namespaces unless `namespaces` names some.

    With `leader_election`, first wait to hold the Lease (answering the liveness probe
    meanwhile), then run kopf standalone for as long as the Lease is held.
    """
    import llmdeploy.operator.handlers
    import llmdeploy.operator.settings  # noqa: F401  (registers the startup settings)
    from llmdeploy.operator.logs import LogFormat, configure_logging

    configure_logging(log_format=LogFormat(log_format), verbose=verbose)
    if leader_election is None:
        kopf.run(
            standalone=standalone,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness or None,
        )
        return
    lost = asyncio.run(_run_elected(leader_election, namespaces=namespaces, liveness=liveness or None))
    if lost:
        sys.exit(1)  # the pod restarts as a candidate


async def _run_elected(cfg: LeaseConfig, *, namespaces: Sequence[str], liveness: str | None) -> bool:
    """Run kopf while holding the Lease; True if it was lost (False: a normal stop)."""
    k8s.load_config()
    async with _standby_health(liveness):
        await leader.acquire(cfg)
    stop = asyncio.Event()
    lost = asyncio.Event()

    def on_lost() -> None:
        lost.set()
        stop.set()

    keeper = asyncio.create_task(leader.hold(cfg, on_lost))
    try:
        # kopf's peering stays off: same-priority peers would all pause; the Lease decides.
        await kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop,
        )
    finally:
        keeper.cancel()
    return lost.is_set()


@contextlib.asynccontextmanager
async def _standby_health(liveness: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe while waiting for the Lease (kopf's own starts with kopf)."""
    if not liveness:
        yield
        return
    url = urllib.parse.urlsplit(liveness)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="standby")

    app = web.Application()
    app.router.add_get(url.path or "/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port or 80, reuse_address=True).start()
    try:
        yield
    finally:
        await runner.cleanup()
