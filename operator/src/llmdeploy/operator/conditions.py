"""Condition types, reasons and the upsert that keeps `lastTransitionTime` honest.

A condition's `lastTransitionTime` moves only when its status flips, as in Kubernetes'
`meta.SetStatusCondition`; reason and message may change in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from llmdeploy.operator.api import ConditionStatus, ConditionType


class Reason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    CHILD_CONFLICT = "RayServiceNotOwned"
    APPLY_FAILED = "ApplyFailed"
    RAYSERVICE_CREATED = "RayServiceCreated"
    RAYSERVICE_UPDATED = "RayServiceUpdated"
    WAITING_FOR_RAYSERVICE = "WaitingForRayService"
    RAYSERVICE_NOT_FOUND = "RayServiceNotFound"
    DEPLOYING = "Deploying"
    SERVING = "Serving"
    UPGRADING = "Upgrading"
    APPLICATION_UNHEALTHY = "ApplicationUnhealthy"
    DEPLOY_FAILED = "DeployFailed"
    AS_EXPECTED = "AsExpected"
    SCALED_TO_ZERO = "ScaledToZero"


def upsert(
    conditions: Sequence[dict[str, Any]],
    type_: ConditionType,
    status: ConditionStatus | bool,
    reason: Reason,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new condition list with `type_` set; the whole list, since merge patches replace lists."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = next((c for c in conditions if c.get("type") == type_.value), None)
    moved = previous is None or previous.get("status") != status.value
    stamp = now.isoformat().replace("+00:00", "Z") if moved else previous["lastTransitionTime"]  # type: ignore[index]
    updated = {
        "type": type_.value,
        "status": status.value,
        "reason": reason.value,
        "message": message,
        "lastTransitionTime": stamp,
        "observedGeneration": generation,
    }
    others = [dict(c) for c in conditions if c.get("type") != type_.value]
    order = [t.value for t in ConditionType]
    return sorted([*others, updated], key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def get(conditions: Sequence[dict[str, Any]], type_: ConditionType) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_.value), None)
