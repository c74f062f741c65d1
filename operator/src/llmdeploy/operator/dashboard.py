"""Reads the Serve application's state from the Ray dashboard on the RayService's head service.

KubeRay exposes the dashboard as `<rayservice>-head-svc:8265`. The read is best-effort: a
cluster that is still starting has no dashboard yet, and the status then keeps what it had.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import aiohttp

from llmdeploy.operator import naming
from llmdeploy.operator.serve_state import ServeObservation, engine_observation

logger = logging.getLogger(__name__)

# Overridable for tests and for operators running outside the cluster (e.g. through a proxy):
# `{name}` is the RayService name, `{namespace}` its namespace; an empty value turns reads off.
URL_TEMPLATE_ENV: Final = "LLMDEPLOY_DASHBOARD_URL_TEMPLATE"
DEFAULT_URL_TEMPLATE: Final = "http://{name}-head-svc.{namespace}.svc.cluster.local:8265"
TIMEOUT_S: Final = 3.0


def dashboard_url(deployment_name: str, namespace: str) -> str | None:
    template = os.environ.get(URL_TEMPLATE_ENV, DEFAULT_URL_TEMPLATE)
    return template.format(name=naming.rayservice_name(deployment_name), namespace=namespace) if template else None


async def observe(deployment_name: str, namespace: str) -> ServeObservation | None:
    """The engine deployment's state, or None when the dashboard cannot be read right now."""
    base = dashboard_url(deployment_name, namespace)
    if base is None:
        return None
    url = f"{base}/api/serve/applications/"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                logger.debug("dashboard %s answered %s", url, response.status)
                return None
            details: Any = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        logger.debug("dashboard %s unreachable: %s", url, exc)
        return None
    return engine_observation(details) if isinstance(details, dict) else None
