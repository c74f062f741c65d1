"""The only module that calls the Kubernetes API (besides kopf's own watching and patching).

Children are created, or replaced with a resourceVersion precondition when they differ from
what render wants, and left alone otherwise: a reconcile that changes nothing sends no write.
The comparison is "desired is contained in live", so fields the API server or KubeRay default
into the RayService do not cause endless re-writes, while hand edits to fields the operator
renders are repaired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from llmdeploy.operator.errors import NotOwnedError
from llmdeploy.operator.naming import ANNOTATION_SPEC_HASH
from llmdeploy.operator.render import RAYSERVICE_API_VERSION

logger = logging.getLogger(__name__)

RAY_GROUP: Final = "ray.io"
RAY_VERSION: Final = "v1"
RAYSERVICES: Final = "rayservices"
# Transient answers of the API server: retried by kopf after a delay, never surfaced as spec errors.
TRANSIENT_STATUSES: Final = frozenset({409, 429, 500, 502, 503, 504})


class ApplyOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def load_config() -> None:
    """In a pod, the service account; elsewhere, the kubeconfig (KUBECONFIG honoured)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def contains(live: Any, desired: Any) -> bool:
    """Whether every value `desired` sets is set the same way in `live` (lists compared item-wise)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def _is_owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


def _temporary(exc: ApiException, what: str) -> kopf.TemporaryError:
    delay = 1.0 if exc.status == 409 else 5.0
    retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
    if retry_after and str(retry_after).isdigit():
        delay = float(retry_after)
    return kopf.TemporaryError(f"{what}: HTTP {exc.status} {exc.reason}", delay=delay)


def _api() -> client.CustomObjectsApi:
    return client.CustomObjectsApi()


async def get_rayservice(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: Any = await asyncio.to_thread(
            _api().get_namespaced_custom_object, RAY_GROUP, RAY_VERSION, namespace, RAYSERVICES, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in TRANSIENT_STATUSES:
            raise _temporary(exc, f"reading RayService {namespace}/{name}") from exc
        raise
    return dict(obj)


async def apply_rayservice(desired: dict[str, Any], owner_uid: str) -> ApplyOutcome:
    """Create or repair the RayService so that it contains `desired`; write nothing if it does."""
    meta = desired["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    live = await get_rayservice(namespace, name)
    api = _api()
    if live is None:
        try:
            await asyncio.to_thread(
                api.create_namespaced_custom_object, RAY_GROUP, RAY_VERSION, namespace, RAYSERVICES, desired
            )
        except ApiException as exc:
            if exc.status in TRANSIENT_STATUSES:  # 409: created meanwhile; the retry compares
                raise _temporary(exc, f"creating RayService {namespace}/{name}") from exc
            raise
        return ApplyOutcome.CREATED
    if not _is_owned_by(live, owner_uid):
        raise NotOwnedError("RayService", name)
    live_meta = live.get("metadata") or {}
    if (
        (live_meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == meta["annotations"][ANNOTATION_SPEC_HASH]
        and contains(live_meta.get("labels") or {}, meta.get("labels") or {})
        and contains(live.get("spec"), desired["spec"])
    ):
        return ApplyOutcome.UNCHANGED
    replacement = {
        "apiVersion": RAYSERVICE_API_VERSION,
        "kind": "RayService",
        "metadata": {
            **live_meta,
            "labels": {**(live_meta.get("labels") or {}), **meta.get("labels", {})},
            "annotations": {**(live_meta.get("annotations") or {}), **meta.get("annotations", {})},
            "ownerReferences": meta.get("ownerReferences", live_meta.get("ownerReferences")),
        },
        "spec": desired["spec"],
    }
    try:
        await asyncio.to_thread(
            api.replace_namespaced_custom_object, RAY_GROUP, RAY_VERSION, namespace, RAYSERVICES, name, replacement
        )
    except ApiException as exc:
        if exc.status in TRANSIENT_STATUSES:  # 409: changed since read; compare again next time
            raise _temporary(exc, f"updating RayService {namespace}/{name}") from exc
        raise
    return ApplyOutcome.UPDATED
