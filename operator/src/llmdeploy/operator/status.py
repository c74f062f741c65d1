"""RayService status -> LLMDeployment status. Pure, so it is tested without a cluster.

KubeRay reports readiness as conditions on the RayService and the Serve application's
health under `activeServiceStatus.applicationStatuses.<app>`; this module turns them into
`Ready`/`Progressing`/`Degraded`, a phase and replica counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llmdeploy.operator import conditions as cond
from llmdeploy.operator.api import ConditionType, Phase
from llmdeploy.operator.conditions import Reason
from llmdeploy.operator.serve_state import MAX_HISTORY, ServeObservation
from llmdeploy.serving.config import APPLICATION_NAME


@dataclass(frozen=True)
class ChildHealth:
    """What the RayService says about the application, in our terms."""

    ready: bool
    progressing: bool
    failed: bool
    reason: Reason
    message: str


def _deployment_messages(app: Mapping[str, Any]) -> list[str]:
    out = []
    for name, dep in sorted((app.get("serveDeploymentStatuses") or {}).items()):
        if dep.get("status") not in (None, "HEALTHY"):
            text = f"{name}: {dep.get('status')}"
            if dep.get("message"):
                text += f" ({dep['message']})"
            out.append(text)
    return out


def child_health(rayservice: Mapping[str, Any] | None) -> ChildHealth:
    if rayservice is None:
        return ChildHealth(False, True, False, Reason.RAYSERVICE_NOT_FOUND, "the RayService does not exist yet")
    status = rayservice.get("status") or {}
    rs_conditions = {c.get("type"): c for c in status.get("conditions") or []}
    app = ((status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}).get(APPLICATION_NAME) or {}
    app_status = app.get("status")
    problems = _deployment_messages(app)
    upgrading = (rs_conditions.get("UpgradeInProgress") or {}).get("status") == "True"
    ready = (rs_conditions.get("Ready") or {}).get("status") == "True" and app_status in (None, "RUNNING")
    if app_status == "DEPLOY_FAILED":
        detail = app.get("message") or "; ".join(problems) or "see the RayService's events"
        return ChildHealth(
            False, False, True, Reason.DEPLOY_FAILED, f"the Serve application failed to deploy: {detail}"
        )
    if app_status == "UNHEALTHY":
        detail = "; ".join(problems) or app.get("message") or ""
        return ChildHealth(
            False, False, True, Reason.APPLICATION_UNHEALTHY, f"the Serve application is unhealthy: {detail}"
        )
    if ready:
        if upgrading:
            return ChildHealth(True, True, False, Reason.UPGRADING, "serving; a new Ray cluster is being prepared")
        return ChildHealth(True, False, False, Reason.SERVING, "serving on all requested replicas")
    detail = (rs_conditions.get("Ready") or {}).get("message") or app_status or "waiting for the Ray cluster"
    return ChildHealth(False, True, False, Reason.DEPLOYING, f"deploying: {detail}")


def phase_of(conditions: Sequence[Mapping[str, Any]]) -> Phase:
    def true(t: ConditionType) -> bool:
        c = cond.get(list(map(dict, conditions)), t)
        return c is not None and c.get("status") == "True"

    if true(ConditionType.DEGRADED):
        return Phase.DEGRADED
    if true(ConditionType.READY):
        return Phase.READY
    if true(ConditionType.PROGRESSING):
        return Phase.PROGRESSING
    return Phase.PENDING


def observed_status(
    current: Mapping[str, Any],
    rayservice: Mapping[str, Any] | None,
    *,
    desired_replicas: int,
    generation: int | None,
    now: datetime,
    serve: ServeObservation | None = None,
) -> dict[str, Any]:
    """The status fields the timer owns, from the child's status (only meaningful if the spec is valid)."""
    health = child_health(rayservice)
    conditions = list(current.get("conditions") or [])
    conditions = cond.upsert(
        conditions, ConditionType.READY, health.ready, health.reason, health.message, now=now, generation=generation
    )
    conditions = cond.upsert(
        conditions,
        ConditionType.PROGRESSING,
        health.progressing,
        health.reason,
        health.message,
        now=now,
        generation=generation,
    )
    conditions = cond.upsert(
        conditions,
        ConditionType.DEGRADED,
        health.failed,
        health.reason if health.failed else Reason.AS_EXPECTED,
        health.message if health.failed else "",
        now=now,
        generation=generation,
    )
    new: dict[str, Any] = {"conditions": conditions, "phase": phase_of(conditions).value}
    if serve is None:
        # Without the dashboard's word, a healthy application serves what the spec asks for.
        new |= {
            "desiredReplicas": desired_replicas,
            "readyReplicas": desired_replicas if health.ready else 0,
            "replicas": desired_replicas if health.ready else 0,
        }
    else:
        new |= {
            "desiredReplicas": serve.desired_replicas,
            "readyReplicas": serve.ready_replicas,
            "replicas": serve.replicas,
            "scalingHistory": merge_history(
                current.get("scalingHistory") or [], serve.history or observed_move(current, serve, now)
            ),
        }
        if serve.queue_depth is not None:
            new["queueDepth"] = serve.queue_depth
    return new


def observed_move(current: Mapping[str, Any], serve: ServeObservation, now: datetime) -> tuple[dict[str, Any], ...]:
    """A history entry when the Serve target read now differs from the one read last time.

    Ray 2.60 keeps its own decisions to itself (`autoscaling_detail` is never filled), so the
    timer records the moves it sees: at most one per tick, so a move and its reversal within
    one tick go unseen. Only after an earlier dashboard read (which always writes
    `scalingHistory`): the spec's count written while the dashboard was unreachable is no move.
    """
    before = current.get("desiredReplicas")
    if "scalingHistory" not in current or not isinstance(before, int) or before == serve.desired_replicas:
        return ()
    reason = f"Ray Serve target {before} -> {serve.desired_replicas}"
    if serve.queue_depth is not None:
        reason += f" (queue {serve.queue_depth:g}/replica)"
    when = now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return ({"time": when, "from": before, "to": serve.desired_replicas, "reason": reason},)


def merge_history(kept: Sequence[Mapping[str, Any]], seen: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Our bounded history plus Ray's recent decisions, oldest first, without duplicates."""
    merged = {(e["time"], e["from"], e["to"]): dict(e) for e in [*kept, *seen]}
    return [merged[k] for k in sorted(merged)][-MAX_HISTORY:]


def changed_fields(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `new` that differ from `current`: the patch, empty when nothing changed."""
    return {k: v for k, v in new.items() if current.get(k) != v}
