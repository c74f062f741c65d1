"""Leader election on a `coordination.k8s.io/v1` Lease: of several operator replicas, one acts.

kopf's own peering is not leader election: operators of the same priority all pause when they
see each other. So `llmdeploy operator --leader-elect` first takes a Lease the way Kubernetes'
controllers do (client-go's leaderelection): create it, or take it over once its holder has not
renewed it for `lease_duration_s`, always with a resourceVersion precondition so two candidates
cannot both win. Only the holder starts kopf; it renews every `renew_interval_s`, and when it
cannot renew before the lease would expire it stops acting (the process exits and its pod
restarts as a candidate). A standby costs one read per `retry_interval_s` and writes nothing.

`decide` is the pure rule; `acquire` and `hold` are the I/O around it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

DEFAULT_LEASE_NAME: Final = "llmdeploy-operator"
_MICROTIME: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def default_identity() -> str:
    """The pod's name where the chart passes it (POD_NAME), else host and process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_namespace() -> str:
    """The operator's own namespace where the chart passes it (POD_NAMESPACE), else `default`."""
    return os.environ.get("POD_NAMESPACE") or "default"


@dataclass(frozen=True)
class LeaseConfig:
    name: str = DEFAULT_LEASE_NAME
    namespace: str = field(default_factory=default_namespace)
    identity: str = field(default_factory=default_identity)
    # A holder that has not renewed for this long is presumed dead: the failover time.
    lease_duration_s: float = 15.0
    # How often the holder renews: well inside the duration, so one slow answer is no loss.
    renew_interval_s: float = 5.0
    # How often a standby looks at the lease.
    retry_interval_s: float = 2.0

    @classmethod
    def from_env(cls, **overrides: Any) -> LeaseConfig:
        def env(name: str, default: float) -> float:
            return float(os.environ.get(name, default))

        base = cls(**overrides)
        return cls(
            **{
                **overrides,
                "lease_duration_s": env("LLMDEPLOY_LEASE_DURATION_S", base.lease_duration_s),
                "renew_interval_s": env("LLMDEPLOY_LEASE_RENEW_S", base.renew_interval_s),
                "retry_interval_s": env("LLMDEPLOY_LEASE_RETRY_S", base.retry_interval_s),
            }
        )


class Action(StrEnum):
    CREATE = "create"  # no lease yet
    TAKE = "take"  # free (expired or released): take it over
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # someone else holds it and is alive


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def decide(lease: Mapping[str, Any] | None, identity: str, now: datetime) -> Action:
    """What a candidate named `identity` does with the lease as read at `now`."""
    if lease is None:
        return Action.CREATE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == identity:
        return Action.RENEW
    renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
    duration = timedelta(seconds=float(spec.get("leaseDurationSeconds") or 0))
    if not holder or renewed is None or renewed + duration <= now:
        return Action.TAKE
    return Action.WAIT


def _lease_body(cfg: LeaseConfig, current: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    spec = dict((current or {}).get("spec") or {})
    stamp = now.strftime(_MICROTIME)
    if spec.get("holderIdentity") != cfg.identity:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
    spec.update(
        holderIdentity=cfg.identity,
        leaseDurationSeconds=max(1, round(cfg.lease_duration_s)),
        renewTime=stamp,
    )
    metadata: dict[str, Any] = {"name": cfg.name, "namespace": cfg.namespace}
    if current is not None:
        metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def _api() -> client.CoordinationV1Api:
    return client.CoordinationV1Api()


async def _read(cfg: LeaseConfig) -> dict[str, Any] | None:
    try:
        obj = await asyncio.to_thread(_api().read_namespaced_lease, cfg.name, cfg.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    data: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return data


async def _try(cfg: LeaseConfig) -> bool | None:
    """One attempt to hold the lease: True if held now, False if another holder is alive,
    None if the write lost a race (read again)."""
    now = datetime.now(UTC)
    current = await _read(cfg)
    action = decide(current, cfg.identity, now)
    if action == Action.WAIT:
        return False
    body = _lease_body(cfg, current, now)
    try:
        if action == Action.CREATE:
            await asyncio.to_thread(_api().create_namespaced_lease, cfg.namespace, cast(Any, body))
        else:
            await asyncio.to_thread(_api().replace_namespaced_lease, cfg.name, cfg.namespace, cast(Any, body))
    except ApiException as exc:
        if exc.status in (409, 422):  # another candidate wrote first: read again next time
            return None
        raise
    if action != Action.RENEW:
        logger.info("leader election: %s now holds lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
    return True


async def acquire(cfg: LeaseConfig) -> None:
    """Return once this candidate holds the lease (waits while a live holder renews it)."""
    logger.info("leader election: %s waiting for lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
    while True:
        try:
            if await _try(cfg):
                return
        except ApiException as exc:
            logger.warning("leader election: reading the lease failed (HTTP %s); retrying", exc.status)
        await asyncio.sleep(cfg.retry_interval_s)


async def hold(cfg: LeaseConfig, on_lost: Callable[[], None]) -> None:
    """Renew the lease until cancelled; call `on_lost` once it cannot be kept."""
    deadline = asyncio.get_running_loop().time() + cfg.lease_duration_s
    while True:
        await asyncio.sleep(cfg.renew_interval_s)
        held: bool | None
        try:
            held = await _try(cfg)
        except ApiException as exc:
            logger.warning("leader election: renewing the lease failed (HTTP %s)", exc.status)
            held = None
        now = asyncio.get_running_loop().time()
        if held:
            deadline = now + cfg.lease_duration_s
        # Another holder, or no renewal before a standby may take over: stop acting now.
        elif held is False or now + cfg.renew_interval_s >= deadline:
            logger.error("leader election: lost lease %s/%s; stopping", cfg.namespace, cfg.name)
            on_lost()
            return
