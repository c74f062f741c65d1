"""Kopf handlers: validate -> render -> adopt -> apply -> status. Domain logic lives elsewhere.

`reconcile` is level-based and idempotent for create, update and resume. `refresh_status`
(a timer) keeps the child in line and reports on it: it re-applies the RayService when it is
missing or was hand-edited away from what render wants (drift repair), and maps the child's
status onto this resource's status. It reads the child from an index that kopf keeps from a
watch on RayServices, so a steady state costs no API call. Both handlers write only the
status fields that changed: a steady state sends no writes at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from llmdeploy.operator import conditions as cond
from llmdeploy.operator import dashboard, k8s, metrics, naming, render
from llmdeploy.operator.api import GROUP, PLURAL, VERSION, AutoscalingSpec, ConditionType, LLMDeploymentSpec
from llmdeploy.operator.conditions import Reason
from llmdeploy.operator.errors import NotOwnedError, SpecError
from llmdeploy.operator.settings import SETTINGS
from llmdeploy.operator.status import changed_fields, observed_status, phase_of
from llmdeploy.operator.validation import Report, parse_spec

__all__ = ["forget", "rayservices_by_owner", "reconcile", "refresh_status"]

_DEFAULT_TARGET_QUEUE_DEPTH: float = AutoscalingSpec.model_fields["target_queue_depth"].default
# Reasons under which nothing was rendered for the current generation.
_BLOCKING = frozenset({Reason.INVALID_SPEC, Reason.CHILD_CONFLICT, Reason.APPLY_FAILED})


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _desired_replicas(spec: LLMDeploymentSpec) -> int:
    scaling = spec.autoscaling
    if not scaling.enabled:
        return spec.replicas
    return 0 if scaling.scale_to_zero.enabled else scaling.min_replicas


def _write_status(patch: kopf.Patch, body: kopf.Body, current: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in changed_fields(current, new).items():
        patch.status[key] = value
    target = (body.spec.get("autoscaling") or {}).get("targetQueueDepth", _DEFAULT_TARGET_QUEUE_DEPTH)
    metrics.DEPLOYMENTS.update(
        body.metadata["namespace"], body.metadata["name"], {**current, **new}, target_queue_depth=float(target)
    )


def _set(
    conditions: list[dict[str, Any]],
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    return cond.upsert(conditions, type_, status, reason, message, now=_now(), generation=generation)


def _degraded(body: kopf.Body, patch: kopf.Patch, reason: Reason, message: str, generation: int | None) -> None:
    metrics.RECONCILE_ERRORS.labels(reason.value).inc()
    kopf.warn(body, reason=reason.value, message=message[:1024])
    current = dict(body.status)
    conditions = list(current.get("conditions") or [])
    conditions = _set(conditions, ConditionType.DEGRADED, True, reason, message, generation)
    conditions = _set(conditions, ConditionType.PROGRESSING, False, reason, message, generation)
    if cond.get(conditions, ConditionType.READY) is None:
        conditions = _set(conditions, ConditionType.READY, False, reason, message, generation)
    new = {"conditions": conditions, "phase": phase_of(conditions).value, "observedGeneration": generation}
    _write_status(patch, body, current, new)


async def _apply(body: kopf.Body, patch: kopf.Patch, desired: dict[str, Any]) -> k8s.ApplyOutcome | None:
    """Apply the child; on a permanent refusal report `Degraded` and return None."""
    meta = body.metadata
    try:
        outcome = await k8s.apply_rayservice(desired, owner_uid=meta["uid"])
    except NotOwnedError as exc:
        _degraded(body, patch, Reason.CHILD_CONFLICT, str(exc), meta.get("generation"))
    except ApiException as exc:
        # A permanent refusal (403, 422): say what the API server said; a spec change retries.
        message = f"the API server refused the RayService: HTTP {exc.status} {exc.reason}: {exc.body}"
        _degraded(body, patch, Reason.APPLY_FAILED, message, meta.get("generation"))
    else:
        if outcome != k8s.ApplyOutcome.UNCHANGED:
            metrics.CHILD_APPLIES.labels("RayService", outcome.value).inc()
        return outcome
    return None


def _desired(body: kopf.Body, spec: LLMDeploymentSpec) -> dict[str, Any]:
    desired = render.render_rayservice(render.Owner(body.metadata["name"], body.metadata["namespace"]), spec)
    kopf.adopt(desired, owner=body)
    return desired


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    with metrics.RECONCILE_DURATION.time():
        outcome = await _reconcile(body, meta, spec, patch, logger)
    metrics.RECONCILES.labels(outcome).inc()


async def _reconcile(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, patch: kopf.Patch, logger: kopf.Logger) -> str:
    """Returns the outcome label: created, updated, unchanged, invalid or refused."""
    generation = meta.get("generation")
    name, namespace = meta["name"], meta["namespace"]
    try:
        parsed, report = parse_spec(spec)
    except SpecError as exc:
        logger.info("invalid spec, nothing applied: %s", "; ".join(exc.problems))
        _degraded(body, patch, Reason.INVALID_SPEC, "; ".join(exc.problems), generation)
        return "invalid"  # terminal until the spec changes: no retry, no exception loop
    desired = _desired(body, parsed)
    outcome = await _apply(body, patch, desired)
    if outcome is None:
        return "refused"
    current = dict(body.status)
    conditions = _set(
        list(current.get("conditions") or []), ConditionType.DEGRADED, False, Reason.AS_EXPECTED, "", generation
    )
    if outcome != k8s.ApplyOutcome.UNCHANGED:
        reason = Reason.RAYSERVICE_CREATED if outcome == k8s.ApplyOutcome.CREATED else Reason.RAYSERVICE_UPDATED
        kopf.event(
            body,
            type="Normal",
            reason=reason.value,
            message=f"RayService {desired['metadata']['name']} {outcome.value}",
        )
        conditions = _set(
            conditions,
            ConditionType.PROGRESSING,
            True,
            reason,
            f"RayService {outcome.value}; waiting for KubeRay to roll it out",
            generation,
        )
    if cond.get(conditions, ConditionType.READY) is None:
        conditions = _set(
            conditions,
            ConditionType.READY,
            False,
            Reason.WAITING_FOR_RAYSERVICE,
            "waiting for the RayService to become ready",
            generation,
        )
    _log_notes(logger, report)
    _write_status(
        patch,
        body,
        current,
        {
            "conditions": conditions,
            "phase": phase_of(conditions).value,
            "observedGeneration": generation,
            "rayServiceName": desired["metadata"]["name"],
            "endpoint": naming.serve_service_url(name, namespace),
            "selector": naming.worker_selector(name),
            "desiredReplicas": _desired_replicas(parsed),
            "quantizationMode": report.quantization_mode,
        },
    )
    return outcome.value


def _log_notes(logger: kopf.Logger, report: Report) -> None:
    for note in report.notes:
        logger.info("note: %s", note)


@kopf.index(k8s.RAY_GROUP, k8s.RAY_VERSION, k8s.RAYSERVICES, labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY})
def rayservices_by_owner(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Owned RayServices keyed by (namespace, owner uid), kept current by kopf's watch."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            key = (body.metadata.namespace or "", ref["uid"])
            return {key: {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}}
    return {}


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.status_interval_s, idle=SETTINGS.status_idle_s)
async def refresh_status(
    body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, patch: kopf.Patch, logger: kopf.Logger, **kwargs: Any
) -> None:
    owned: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["rayservices_by_owner"]
    current = dict(body.status)
    generation = meta.get("generation")
    if current.get("observedGeneration") != generation:
        return  # the reconcile for this generation has not finished: it writes status first
    degraded = cond.get(current.get("conditions") or [], ConditionType.DEGRADED)
    if degraded and degraded.get("status") == "True" and degraded.get("reason") in _BLOCKING:
        return  # nothing rendered for this generation: the child's status says nothing about it
    try:
        parsed, _ = parse_spec(spec)
    except SpecError:
        return  # reported by reconcile
    found = list(owned.get((meta["namespace"], meta["uid"]), []))
    child = found[0] if found else None
    desired = _desired(body, parsed)
    if child is None or not k8s.contains(
        child, {"metadata": {"annotations": desired["metadata"]["annotations"]}, "spec": desired["spec"]}
    ):
        outcome = await _apply(body, patch, desired)
        if outcome is not None and outcome != k8s.ApplyOutcome.UNCHANGED:
            what = "recreated" if outcome == k8s.ApplyOutcome.CREATED else "repaired (it had been edited by hand)"
            metrics.DRIFT_REPAIRS.inc()
            kopf.warn(body, reason="RayServiceDrift", message=f"RayService {desired['metadata']['name']} {what}")
            logger.warning("RayService %s %s", desired["metadata"]["name"], what)
    serve = await dashboard.observe(meta["name"], meta["namespace"]) if child is not None else None
    new = observed_status(
        current,
        child,
        desired_replicas=int(current.get("desiredReplicas") or 0),
        generation=generation,
        now=_now(),
        serve=serve,
    )
    _write_status(patch, body, current, new)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(meta: kopf.Meta, **_: Any) -> None:
    """Drop a deleted LLMDeployment's gauges (optional: adds no finalizer; children go by GC)."""
    metrics.DEPLOYMENTS.forget(meta["namespace"], meta["name"])
