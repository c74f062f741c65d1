"""Reads the Serve application's state from the Ray dashboard on the RayService's head service.

KubeRay exposes the dashboard as `<rayservice>-head-svc:8265` and the head's metrics as
`:8080`; the autoscaling policy runs in Ray's controller on the head, so the queue-depth gauge it
sets is there. The reads are best-effort: a cluster that is still starting has no dashboard
yet, and the status then keeps what it had.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Final

import aiohttp

from llmdeploy.operator import naming
from llmdeploy.operator.serve_state import ServeObservation, engine_observation, policy_queue_depth

logger = logging.getLogger(__name__)

# Overridable for tests and for operators running outside the cluster (e.g. through a proxy):
# `{name}` is the RayService name, `{namespace}` its namespace; an empty value turns reads off.
URL_TEMPLATE_ENV: Final = "LLMDEPLOY_DASHBOARD_URL_TEMPLATE"
DEFAULT_URL_TEMPLATE: Final = "http://{name}-head-svc.{namespace}.svc.cluster.local:8265"
# The head's Prometheus endpoint (base URL; `/metrics` is appended), read only after the dashboard answered.
METRICS_URL_TEMPLATE_ENV: Final = "LLMDEPLOY_RAY_METRICS_URL_TEMPLATE"
DEFAULT_METRICS_URL_TEMPLATE: Final = "http://{name}-head-svc.{namespace}.svc.cluster.local:8080"
TIMEOUT_S: Final = 3.0
# Answers that mean the dashboard wants credentials (Ray token authentication is on).
_REFUSED: Final = frozenset({401, 403})
# Deployments whose dashboard refused the last read, so the warning is logged once per refusal.
_refused: set[tuple[str, str]] = set()


def dashboard_url(deployment_name: str, namespace: str) -> str | None:
    template = os.environ.get(URL_TEMPLATE_ENV, DEFAULT_URL_TEMPLATE)
    return template.format(name=naming.rayservice_name(deployment_name), namespace=namespace) if template else None


def metrics_url(deployment_name: str, namespace: str) -> str | None:
    template = os.environ.get(METRICS_URL_TEMPLATE_ENV, DEFAULT_METRICS_URL_TEMPLATE)
    return template.format(name=naming.rayservice_name(deployment_name), namespace=namespace) if template else None


async def observe(deployment_name: str, namespace: str) -> ServeObservation | None:
    """The engine deployment's state, or None when the dashboard cannot be read right now."""
    base = dashboard_url(deployment_name, namespace)
    if base is None:
        return None
    url = f"{base}/api/serve/applications/"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        try:
            async with session.get(url) as response:
                if response.status in _REFUSED:
                    _warn_refused(namespace, deployment_name, url, response.status)
                    return None
                if response.status != 200:
                    logger.debug("dashboard %s answered %s", url, response.status)
                    return None
                details: Any = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.debug("dashboard %s unreachable: %s", url, exc)
            return None
        _refused.discard((namespace, deployment_name))
        observation = engine_observation(details) if isinstance(details, dict) else None
        if observation is None or observation.queue_depth is not None:
            return observation
        depth = await _policy_queue_depth(session, metrics_url(deployment_name, namespace))
    return observation if depth is None else dataclasses.replace(observation, queue_depth=depth)


def _warn_refused(namespace: str, deployment_name: str, url: str, status: int) -> None:
    """Say once why the status stops following the application, and what to do about it."""
    if (namespace, deployment_name) in _refused:
        return
    _refused.add((namespace, deployment_name))
    logger.warning(
        "%s/%s: the Ray dashboard refused to answer (HTTP %s from %s): Ray token authentication is "
        "on for its cluster, and the operator holds no Ray token. status.replicas, readyReplicas "
        "and desiredReplicas follow the spec and status.queueDepth and scalingHistory stay as they "
        "are until the dashboard answers without a token; set %s to a proxy that adds it, or "
        "turn token authentication off for this cluster.",
        namespace,
        deployment_name,
        status,
        url,
        URL_TEMPLATE_ENV,
    )


async def _policy_queue_depth(session: aiohttp.ClientSession, base: str | None) -> float | None:
    """The policy's queue-depth gauge from the head's metrics port; None when unreadable."""
    if base is None:
        return None
    url = f"{base}/metrics"
    try:
        async with session.get(url) as response:
            if response.status != 200:
                logger.debug("metrics %s answered %s", url, response.status)
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        logger.debug("metrics %s unreachable: %s", url, exc)
        return None
    return policy_queue_depth(text)
