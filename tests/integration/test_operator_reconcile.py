"""The real operator process against the Kubernetes API emulator: create, change, readiness,
invalid specs, deletion, restarts, drift. Writes are counted from the emulator's traffic log."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from llmdeploy.testing.kubeapi import ApiError, KubeAPI

from .conftest import LLMD, RAYSERVICES, OperatorProcess, llmdeployment, wait_for

pytestmark = pytest.mark.integration


def _status(kube: KubeAPI, name: str) -> dict[str, Any]:
    obj = kube.get(*LLMD, "default", name) or {}
    return dict(obj.get("status") or {})


def _condition(kube: KubeAPI, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in _status(kube, name).get("conditions", []) if c["type"] == type_), {})


def _events(kube: KubeAPI, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.objects("", "v1", "events", "default") if e["involvedObject"]["name"] == name]


def _wait_event(kube: KubeAPI, operator: OperatorProcess, name: str, reason: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: next((e for e in _events(kube, name) if e["reason"] == reason), None),
        what=f"a {reason} event",
        operator=operator,
    )
    return found


def _make_ready(kube: KubeAPI, name: str) -> None:
    kube.patch_object(
        *RAYSERVICES,
        "default",
        name,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "RunningServeApp",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
                "activeServiceStatus": {
                    "applicationStatuses": {
                        "llm": {"status": "RUNNING", "serveDeploymentStatuses": {"LLMServer": {"status": "HEALTHY"}}}
                    }
                },
            }
        },
        subresource="status",
    )


def _settle(kube: KubeAPI, operator: OperatorProcess, name: str) -> dict[str, Any]:
    """Create `name` and wait until the operator has written its first status."""
    kube.put_object(*LLMD, llmdeployment(name))
    return wait_for(
        lambda: kube.get(*RAYSERVICES, "default", name) and _status(kube, name).get("observedGeneration"),
        what=f"{name} reconciled",
        operator=operator,
    )


def _quiet_writes(kube: KubeAPI, seconds: float) -> list[Any]:
    kube.clear_log()
    time.sleep(seconds)
    return kube.writes()


def test_create_renders_an_owned_rayservice_and_reports_progress(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    rs = kube.get(*RAYSERVICES, "default", "tiny")
    owner = kube.get(*LLMD, "default", "tiny")
    assert rs is not None and owner is not None
    (ref,) = rs["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "LLMDeployment",
        "tiny",
        owner["metadata"]["uid"],
        True,
    )
    assert rs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmdeploy-operator"
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert config["applications"][0]["import_path"] == "llmdeploy.serving.app:build_app"
    status = _status(kube, "tiny")
    assert status["observedGeneration"] == 1
    assert status["rayServiceName"] == "tiny"
    assert status["endpoint"] == "http://tiny-serve-svc.default.svc.cluster.local:8000/v1"
    assert status["phase"] == "Progressing"
    assert _condition(kube, "tiny", "Ready")["status"] == "False"
    assert _condition(kube, "tiny", "Degraded")["status"] == "False"
    _wait_event(kube, operator, "tiny", "RayServiceCreated")


def test_rayservice_readiness_reaches_the_status(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    _make_ready(kube, "tiny")
    wait_for(lambda: _status(kube, "tiny").get("phase") == "Ready", what="phase Ready", operator=operator)
    status = _status(kube, "tiny")
    assert status["readyReplicas"] == 1
    assert status["replicas"] == 1
    assert _condition(kube, "tiny", "Ready")["reason"] == "Serving"
    # A failing application turns the resource Degraded with the deployment's message.
    kube.patch_object(
        *RAYSERVICES,
        "default",
        "tiny",
        {
            "status": {
                "activeServiceStatus": {
                    "applicationStatuses": {
                        "llm": {
                            "status": "UNHEALTHY",
                            "serveDeploymentStatuses": {"LLMServer": {"status": "UNHEALTHY", "message": "engine died"}},
                        }
                    }
                }
            }
        },
        subresource="status",
    )
    wait_for(lambda: _status(kube, "tiny").get("phase") == "Degraded", what="phase Degraded", operator=operator)
    assert "engine died" in _condition(kube, "tiny", "Degraded")["message"]


def test_spec_change_patches_the_same_rayservice_in_place(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    before = kube.get(*RAYSERVICES, "default", "tiny")
    assert before is not None
    kube.patch_object(*LLMD, "default", "tiny", {"spec": {"batching": {"maxNumSeqs": 7}}})
    after = wait_for(
        lambda: (
            (rs := kube.get(*RAYSERVICES, "default", "tiny"))
            and "max_num_seqs: 7" in rs["spec"]["serveConfigV2"]
            and rs
        ),
        what="serveConfigV2 updated",
        operator=operator,
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    wait_for(
        lambda: _status(kube, "tiny").get("observedGeneration") == 2, what="observedGeneration 2", operator=operator
    )
    _wait_event(kube, operator, "tiny", "RayServiceUpdated")


def test_invalid_spec_is_degraded_with_an_event_and_no_child(kube: KubeAPI, operator: OperatorProcess) -> None:
    kube.put_object(*LLMD, llmdeployment("bad", quantization={"method": "awq"}))
    wait_for(lambda: _condition(kube, "bad", "Degraded").get("status") == "True", what="Degraded", operator=operator)
    message = _condition(kube, "bad", "Degraded")["message"]
    assert "spec.quantization.method: awq cannot run on accelerator.type cpu" in message
    assert _status(kube, "bad")["phase"] == "Degraded"
    warning = _wait_event(kube, operator, "bad", "InvalidSpec")
    assert warning["type"] == "Warning"
    assert kube.get(*RAYSERVICES, "default", "bad") is None
    # Terminal until the spec changes: no retry loop, no further writes.
    assert _quiet_writes(kube, 2.0) == []
    kube.patch_object(*LLMD, "default", "bad", {"spec": {"quantization": {"method": "fp8_per_channel"}}})
    wait_for(lambda: kube.get(*RAYSERVICES, "default", "bad"), what="RayService after the fix", operator=operator)
    wait_for(
        lambda: _condition(kube, "bad", "Degraded").get("status") == "False", what="Degraded cleared", operator=operator
    )


def test_schema_violations_are_rejected_at_admission(kube: KubeAPI) -> None:
    with pytest.raises(ApiError) as err:
        kube.put_object(*LLMD, llmdeployment("x", autoscaling={"minReplicas": 5, "maxReplicas": 2}))
    assert err.value.code == 422
    assert "minReplicas must not exceed" in str(err.value)
    with pytest.raises(ApiError) as err:
        kube.put_object(*LLMD, llmdeployment("y", replicas=-1))
    assert err.value.code == 422


def test_deletion_garbage_collects_the_rayservice(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    kube.delete(*LLMD, "default", "tiny")
    wait_for(lambda: kube.get(*LLMD, "default", "tiny") is None, what="LLMDeployment gone", operator=operator)
    assert kube.get(*RAYSERVICES, "default", "tiny") is None


def test_steady_state_and_restart_write_nothing(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    _make_ready(kube, "tiny")
    wait_for(lambda: _status(kube, "tiny").get("phase") == "Ready", what="Ready", operator=operator)
    assert _quiet_writes(kube, 3.0) == [], "a steady state must send no writes"
    operator.stop(kill=True)
    kube.clear_log()
    operator.start()
    wait_for(
        lambda: any(r.verb == "watch" and r.resource == "llmdeployments" for r in kube.requests),
        what="the restarted operator watching",
        operator=operator,
    )
    time.sleep(3.0)  # resume handlers and several timer periods
    assert [(w.method, w.path) for w in kube.writes(changed=True)] == []
    assert len(kube.objects(*RAYSERVICES, "default")) == 1


def test_hand_edits_to_the_rayservice_are_repaired(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    rs = kube.get(*RAYSERVICES, "default", "tiny")
    assert rs is not None
    wanted = rs["spec"]["serveConfigV2"]
    kube.patch_object(*RAYSERVICES, "default", "tiny", {"spec": {"serveConfigV2": "applications: []\n"}})
    wait_for(
        lambda: (kube.get(*RAYSERVICES, "default", "tiny") or {}).get("spec", {}).get("serveConfigV2") == wanted,
        what="drift repaired",
        operator=operator,
    )
    _wait_event(kube, operator, "tiny", "RayServiceDrift")
    kube.delete(*RAYSERVICES, "default", "tiny")
    wait_for(lambda: kube.get(*RAYSERVICES, "default", "tiny"), what="RayService recreated", operator=operator)


def test_a_rayservice_owned_by_someone_else_is_not_taken_over(kube: KubeAPI, operator: OperatorProcess) -> None:
    kube.put_object(
        *RAYSERVICES,
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": {"name": "taken", "namespace": "default"},
            "spec": {
                "serveConfigV2": "applications: []\n",
                "rayClusterConfig": {
                    "headGroupSpec": {
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [{"name": "h", "image": "x"}]}},
                    }
                },
            },
        },
    )
    kube.put_object(*LLMD, llmdeployment("taken"))
    wait_for(
        lambda: _condition(kube, "taken", "Degraded").get("reason") == "RayServiceNotOwned",
        what="ownership conflict reported",
        operator=operator,
    )
    rs = kube.get(*RAYSERVICES, "default", "taken")
    assert rs is not None and rs["spec"]["serveConfigV2"] == "applications: []\n"


def _sample(text: str, metric: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_operator_metrics_follow_the_work(kube: KubeAPI, operator: OperatorProcess) -> None:
    _settle(kube, operator, "tiny")
    _make_ready(kube, "tiny")
    wait_for(
        lambda: _sample(operator.metrics(), "llmdeploy_deployment_ready_replicas", name="tiny") == 1,
        what="ready replicas in metrics",
        operator=operator,
    )
    text = operator.metrics()
    assert _sample(text, "llmdeploy_operator_reconciles_total", outcome="created") == 1
    assert _sample(text, "llmdeploy_operator_child_applies_total", kind="RayService", outcome="created") == 1
    assert _sample(text, "llmdeploy_operator_deployments", phase="Ready") == 1
    assert _sample(text, "llmdeploy_deployment_desired_replicas", namespace="default", name="tiny") == 1
    assert _sample(text, "llmdeploy_deployment_target_queue_depth", name="tiny") == 4
    assert (_sample(text, "llmdeploy_operator_reconcile_duration_seconds_count") or 0) >= 1
    kube.put_object(*LLMD, llmdeployment("bad", quantization={"method": "awq"}))
    wait_for(
        lambda: _sample(operator.metrics(), "llmdeploy_operator_reconcile_errors_total", reason="InvalidSpec"),
        what="invalid spec counted",
        operator=operator,
    )
    kube.delete(*LLMD, "default", "tiny")
    wait_for(
        lambda: _sample(operator.metrics(), "llmdeploy_deployment_desired_replicas", name="tiny") is None,
        what="deleted deployment forgotten",
        operator=operator,
    )
