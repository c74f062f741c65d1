"""The RayService's status maps onto Ready/Progressing/Degraded, a phase and replica counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmdeploy.operator import conditions as cond
from llmdeploy.operator.api import ConditionType
from llmdeploy.operator.conditions import Reason
from llmdeploy.operator.status import changed_fields, observed_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _rs(
    ready: str | None, app: str | None = None, deployments: dict[str, Any] | None = None, upgrading: bool = False
) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready, "message": "m"}]
    if upgrading:
        conditions.append({"type": "UpgradeInProgress", "status": "True"})
    status: dict[str, Any] = {"conditions": conditions}
    if app:
        status["activeServiceStatus"] = {
            "applicationStatuses": {"llm": {"status": app, "serveDeploymentStatuses": deployments or {}}}
        }
    return {"status": status}


def _status_of(rs: dict[str, Any] | None) -> dict[str, Any]:
    return observed_status({}, rs, desired_replicas=2, generation=3, now=NOW)


@pytest.mark.parametrize(
    ("rayservice", "phase", "ready", "progressing", "degraded", "ready_replicas"),
    [
        (None, "Progressing", "False", "True", "False", 0),
        (_rs(None), "Progressing", "False", "True", "False", 0),
        (_rs("False", "DEPLOYING"), "Progressing", "False", "True", "False", 0),
        (_rs("True", "RUNNING"), "Ready", "True", "False", "False", 2),
        (_rs("True", "RUNNING", upgrading=True), "Ready", "True", "True", "False", 2),
        (_rs("False", "DEPLOY_FAILED"), "Degraded", "False", "False", "True", 0),
        (
            _rs("True", "UNHEALTHY", {"LLMServer": {"status": "UNHEALTHY", "message": "engine died"}}),
            "Degraded",
            "False",
            "False",
            "True",
            0,
        ),
    ],
)
def test_mapping(
    rayservice: dict[str, Any] | None, phase: str, ready: str, progressing: str, degraded: str, ready_replicas: int
) -> None:
    status = _status_of(rayservice)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == phase
    assert (by_type["Ready"]["status"], by_type["Progressing"]["status"], by_type["Degraded"]["status"]) == (
        ready,
        progressing,
        degraded,
    )
    assert status["readyReplicas"] == ready_replicas
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def test_unhealthy_deployment_message_reaches_the_condition() -> None:
    status = _status_of(_rs("True", "UNHEALTHY", {"LLMServer": {"status": "UNHEALTHY", "message": "engine died"}}))
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "engine died" in degraded["message"]


def test_same_child_status_twice_changes_nothing() -> None:
    first = _status_of(_rs("True", "RUNNING"))
    later = observed_status(
        first, _rs("True", "RUNNING"), desired_replicas=2, generation=3, now=NOW + timedelta(minutes=5)
    )
    assert changed_fields(first, later) == {}


def test_transition_time_moves_only_when_status_flips() -> None:
    base = cond.upsert([], ConditionType.READY, False, Reason.DEPLOYING, "a", now=NOW, generation=1)
    same = cond.upsert(
        base, ConditionType.READY, False, Reason.DEPLOYING, "b", now=NOW + timedelta(seconds=9), generation=1
    )
    flipped = cond.upsert(
        same, ConditionType.READY, True, Reason.SERVING, "c", now=NOW + timedelta(seconds=20), generation=1
    )
    assert same[0]["lastTransitionTime"] == base[0]["lastTransitionTime"]
    assert same[0]["message"] == "b"
    assert flipped[0]["lastTransitionTime"] != base[0]["lastTransitionTime"]
