"""GPU pods follow replicas: the worker group's bounds come from the scaling mode."""

from __future__ import annotations

from typing import Any

import pytest

from llmdeploy.operator.api import LLMDeploymentSpec
from llmdeploy.operator.render import Owner, render_rayservice


def _group(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"source": "org/m-8B"}, "accelerator": {"type": "nvidia-h100-80gb", "count": 2}}
    body.update(spec)
    rendered = render_rayservice(Owner("d", "ns"), LLMDeploymentSpec.model_validate(body))
    cluster = rendered["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    result: dict[str, Any] = group
    return result


@pytest.mark.parametrize(
    ("spec", "bounds"),
    [
        ({"replicas": 3}, (3, 3, 3)),
        ({"replicas": 0}, (0, 0, 0)),
        ({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6}}, (1, 1, 6)),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "scaleToZero": {"enabled": True}}},
            (0, 0, 4),
        ),
    ],
)
def test_bounds(spec: dict[str, Any], bounds: tuple[int, int, int]) -> None:
    group = _group(**spec)
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == bounds


def test_each_worker_pod_holds_one_replicas_gpus() -> None:
    (container,) = _group()["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2


def test_idle_workers_are_released() -> None:
    body = {"model": {"source": "org/m"}, "ray": {"workerIdleTimeoutSeconds": 90}}
    rendered = render_rayservice(Owner("d", "ns"), LLMDeploymentSpec.model_validate(body))
    assert rendered["spec"]["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 90


def test_scaling_the_replica_count_changes_only_fields_kuberay_applies_in_place() -> None:
    """KubeRay mutes worker-group replicas/min/max when deciding whether to roll a new cluster."""

    def muted(spec: dict[str, Any]) -> dict[str, Any]:
        cluster = dict(spec["rayClusterConfig"])
        cluster["workerGroupSpecs"] = [
            {k: v for k, v in g.items() if k not in {"replicas", "minReplicas", "maxReplicas"}}
            for g in cluster["workerGroupSpecs"]
        ]
        return cluster

    def rendered(replicas: int) -> dict[str, Any]:
        spec = LLMDeploymentSpec.model_validate({"model": {"source": "org/m"}, "replicas": replicas})
        result: dict[str, Any] = render_rayservice(Owner("d", "ns"), spec)["spec"]
        return result

    one, three = rendered(1), rendered(3)
    assert muted(one) == muted(three)
    assert one["serveConfigV2"] != three["serveConfigV2"]  # applied in place by KubeRay


def test_external_scaling_example_leaves_the_count_to_spec_replicas() -> None:
    from pathlib import Path

    import yaml

    from llmdeploy.operator.manifest import load_manifests

    folder = Path(__file__).resolve().parents[3] / "examples" / "external-scaling"
    ((obj, _),) = load_manifests(str(folder / "llmdeployment.yaml"))
    assert obj.spec.autoscaling.enabled is False
    scaled = yaml.safe_load((folder / "keda-scaledobject.yaml").read_text())
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "llmdeploy.io/v1alpha1",
        "LLMDeployment",
        obj.metadata.name,
    )
    assert "ray_vllm_num_requests_waiting" in scaled["spec"]["triggers"][0]["metadata"]["query"]
