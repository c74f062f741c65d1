"""Kopf handlers: validate -> render -> adopt -> apply -> status. Domain logic lives elsewhere.

`reconcile` is level-based and idempotent for create, update and resume. `refresh_status`
(a timer) maps the child RayService's status onto this resource's status, read from an index
that kopf keeps from a watch on RayServices, so it costs no API call. Both write only the
status fields that changed, so a steady state sends no writes at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from llmdeploy.operator import conditions as cond
from llmdeploy.operator import k8s, naming, render
from llmdeploy.operator.api import GROUP, PLURAL, VERSION, ConditionType, LLMDeploymentSpec
from llmdeploy.operator.conditions import Reason
from llmdeploy.operator.errors import NotOwnedError, SpecError
from llmdeploy.operator.settings import SETTINGS
from llmdeploy.operator.status import changed_fields, observed_status, phase_of
from llmdeploy.operator.validation import parse_spec

__all__ = ["rayservices_by_owner", "reconcile", "refresh_status"]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _desired_replicas(spec: LLMDeploymentSpec) -> int:
    scaling = spec.autoscaling
    if not scaling.enabled:
        return spec.replicas
    return 0 if scaling.scale_to_zero.enabled else scaling.min_replicas


def _write_status(patch: kopf.Patch, current: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in changed_fields(current, new).items():
        patch.status[key] = value


def _degraded(body: kopf.Body, patch: kopf.Patch, reason: Reason, message: str, generation: int | None) -> None:
    current = dict(body.status)
    conditions = list(current.get("conditions") or [])
    now = _now()
    conditions = cond.upsert(conditions, ConditionType.DEGRADED, True, reason, message, now=now, generation=generation)
    conditions = cond.upsert(
        conditions, ConditionType.PROGRESSING, False, reason, message, now=now, generation=generation
    )
    if cond.get(conditions, ConditionType.READY) is None:
        conditions = cond.upsert(
            conditions, ConditionType.READY, False, reason, message, now=now, generation=generation
        )
    _write_status(
        patch,
        current,
        {
            "conditions": conditions,
            "phase": phase_of(conditions).value,
            "observedGeneration": generation,
        },
    )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    generation = meta.get("generation")
    name, namespace = meta["name"], meta["namespace"]
    try:
        parsed, report = parse_spec(spec)
    except SpecError as exc:
        message = "; ".join(exc.problems)
        kopf.warn(body, reason=Reason.INVALID_SPEC.value, message=message)
        logger.info("invalid spec, nothing applied: %s", message)
        _degraded(body, patch, Reason.INVALID_SPEC, message, generation)
        return  # terminal until the spec changes: no retry, no exception loop
    desired = render.render_rayservice(render.Owner(name, namespace), parsed)
    kopf.adopt(desired, owner=body)
    try:
        outcome = await k8s.apply_rayservice(desired, owner_uid=meta["uid"])
    except NotOwnedError as exc:
        kopf.warn(body, reason=Reason.CHILD_CONFLICT.value, message=str(exc))
        _degraded(body, patch, Reason.CHILD_CONFLICT, str(exc), generation)
        return
    except ApiException as exc:
        # A permanent refusal (403, 422): say what the API server said; the next spec change retries.
        message = f"the API server refused the RayService: HTTP {exc.status} {exc.reason}: {exc.body}"
        kopf.warn(body, reason=Reason.APPLY_FAILED.value, message=message[:1024])
        _degraded(body, patch, Reason.APPLY_FAILED, message[:1024], generation)
        return
    if outcome != k8s.ApplyOutcome.UNCHANGED:
        reason = Reason.RAYSERVICE_CREATED if outcome == k8s.ApplyOutcome.CREATED else Reason.RAYSERVICE_UPDATED
        kopf.info(body, reason=reason.value, message=f"RayService {desired['metadata']['name']} {outcome.value}")
    current = dict(body.status)
    conditions = list(current.get("conditions") or [])
    now = _now()
    conditions = cond.upsert(
        conditions, ConditionType.DEGRADED, False, Reason.SPEC_VALID, "", now=now, generation=generation
    )
    if outcome != k8s.ApplyOutcome.UNCHANGED:
        conditions = cond.upsert(
            conditions,
            ConditionType.PROGRESSING,
            True,
            reason,
            f"RayService {outcome.value}; waiting for KubeRay to roll it out",
            now=now,
            generation=generation,
        )
    if cond.get(conditions, ConditionType.READY) is None:
        conditions = cond.upsert(
            conditions,
            ConditionType.READY,
            False,
            Reason.WAITING_FOR_RAYSERVICE,
            "waiting for the RayService to become ready",
            now=now,
            generation=generation,
        )
    notes = "; ".join(str(n) for n in report.notes)
    if notes:
        logger.info("spec notes: %s", notes)
    _write_status(
        patch,
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


@kopf.index(k8s.RAY_GROUP, k8s.RAY_VERSION, k8s.RAYSERVICES, labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY})
def rayservices_by_owner(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Owned RayServices keyed by (namespace, owner uid), kept current by kopf's watch."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            return {(body.metadata.namespace or "", ref["uid"]): {"status": dict(body.get("status") or {})}}
    return {}


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.status_interval_s, idle=SETTINGS.status_idle_s)
def refresh_status(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **kwargs: Any) -> None:
    owned: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["rayservices_by_owner"]
    current = dict(body.status)
    degraded = cond.get(current.get("conditions") or [], ConditionType.DEGRADED)
    generation = meta.get("generation")
    if current.get("observedGeneration") != generation:
        return  # the reconcile for this generation has not finished: it writes status first
    if (
        degraded
        and degraded.get("status") == "True"
        and degraded.get("reason") in {Reason.INVALID_SPEC, Reason.CHILD_CONFLICT, Reason.APPLY_FAILED}
    ):
        return  # nothing rendered for this generation: the child's status says nothing about it
    key = (meta["namespace"], meta["uid"])
    found = list(owned.get(key, []))
    child = found[0] if found else None
    desired = int(current.get("desiredReplicas") or 0)
    new = observed_status(current, child, desired_replicas=desired, generation=generation, now=_now())
    _write_status(patch, current, new)
