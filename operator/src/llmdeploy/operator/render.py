"""Spec -> the KubeRay `RayService` that runs it. Pure: no clock, environment or randomness.

One RayService per LLMDeployment: a head group without accelerators (Serve controller,
proxies, ingress, dashboard and metrics) and one worker group whose pods each hold one
replica's accelerators. Ray's in-tree autoscaler adds and removes worker pods as Serve adds
and removes replicas, inside the group's min/max. KubeRay mutes worker-group
replicas/min/max when deciding whether a cluster change needs a new cluster, so changing
replica bounds is applied in place, as is any change to `serveConfigV2`.

The spec-hash annotation covers the whole rendered spec: Ray's autoscaler writes the
RayCluster, never the RayService, so nothing in this object is owned by another controller.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from llmdeploy.operator import naming
from llmdeploy.operator.accelerators import ACCELERATORS, AcceleratorType
from llmdeploy.operator.api import LLMDeploymentSpec, ResponseCacheBackend
from llmdeploy.operator.serveconfig import PVC_MOUNT_ROOT, pvc_parts, serve_config_v2, serving_args
from llmdeploy.serving import config as sc

RAYSERVICE_API_VERSION: Final = "ray.io/v1"
GPU_RESOURCE: Final = "nvidia.com/gpu"
HEAD_CONTAINER: Final = "ray-head"
WORKER_CONTAINER: Final = "ray-worker"
WORKER_GROUP: Final = "llm-workers"
METRICS_PORT: Final = 8080
DASHBOARD_PORT: Final = 8265
# Per accelerator, when spec.ray.workerResources is not set.
DEFAULT_WORKER_CPU_PER_GPU: Final = 8
DEFAULT_WORKER_MEMORY_GIB_PER_GPU: Final = 32
DEFAULT_CPU_WORKER: Final = ("4", "16Gi")
SHM_SIZE: Final = "8Gi"


@dataclass(frozen=True)
class Owner:
    """The LLMDeployment a child belongs to (name and namespace are all render needs)."""

    name: str
    namespace: str


def spec_hash(obj_spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj_spec, sort_keys=True).encode()).hexdigest()[:16]


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _shared_env(spec: LLMDeploymentSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    cache = spec.response_cache
    if cache.enabled and cache.backend == ResponseCacheBackend.REDIS and cache.redis_url_secret:
        ref = cache.redis_url_secret
        env.append(_secret_env(sc.REDIS_URL_ENV, ref.name, ref.key))
    if spec.auth.api_keys_secret is not None:
        ref = spec.auth.api_keys_secret
        env.append(_secret_env(sc.API_KEYS_ENV, ref.name, ref.key))
    return env


def _ports() -> list[dict[str, Any]]:
    return [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": sc.SERVE_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]


def _head_group(spec: LLMDeploymentSpec, pod_labels: dict[str, str]) -> dict[str, Any]:
    res = spec.ray.head_resources
    resources = {"cpu": res.cpu, "memory": res.memory}
    return {
        # The head schedules no replica: it advertises no GPUs.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0", "metrics-export-port": str(METRICS_PORT)},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "containers": [
                    {
                        "name": HEAD_CONTAINER,
                        "image": spec.ray.image,
                        "ports": _ports(),
                        "env": _shared_env(spec),
                        "resources": {"requests": dict(resources), "limits": dict(resources)},
                    }
                ]
            },
        },
    }


def _worker_bounds(spec: LLMDeploymentSpec) -> tuple[int, int, int]:
    """(replicas, minReplicas, maxReplicas) of the worker group: one pod per serving replica."""
    scaling = spec.autoscaling
    if scaling.enabled:
        floor = 0 if scaling.scale_to_zero.enabled else scaling.min_replicas
        return floor, floor, scaling.max_replicas
    return spec.replicas, spec.replicas, spec.replicas


def _worker_group(spec: LLMDeploymentSpec, pod_labels: dict[str, str]) -> dict[str, Any]:
    acc = ACCELERATORS[spec.accelerator.type]
    count = spec.accelerator.count
    if spec.ray.worker_resources is not None:
        cpu, memory = spec.ray.worker_resources.cpu, spec.ray.worker_resources.memory
    elif acc.is_gpu:
        cpu, memory = str(DEFAULT_WORKER_CPU_PER_GPU * count), f"{DEFAULT_WORKER_MEMORY_GIB_PER_GPU * count}Gi"
    else:
        cpu, memory = DEFAULT_CPU_WORKER
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if acc.is_gpu:
        limits[GPU_RESOURCE] = count
    env = _shared_env(spec)
    if spec.model.credentials_secret is not None:
        ref = spec.model.credentials_secret
        env.append(_secret_env(sc.HF_TOKEN_ENV, ref.name, ref.key))
    if not acc.is_gpu:
        # vLLM's CPU backend pins threads to cores it assumes it owns; in a pod it does not.
        env.append({"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"})
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for source in filter(None, (spec.model.source, spec.model.draft.source if spec.model.draft else None)):
        if source.startswith("pvc://"):
            claim, _ = pvc_parts(source)
            volume = f"model-{claim}"
            if all(v["name"] != volume for v in volumes):
                volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
                mounts.append({"name": volume, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": WORKER_CONTAINER,
                "image": spec.ray.image,
                "env": env,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if spec.ray.gpu_node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.ray.gpu_node_selector.items()))
    tolerations = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in spec.ray.gpu_tolerations]
    if acc.is_gpu:
        # GPU node pools are commonly tainted with the GPU resource name.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    replicas, low, high = _worker_bounds(spec)
    return {
        "groupName": WORKER_GROUP,
        "replicas": replicas,
        "minReplicas": low,
        "maxReplicas": high,
        "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }


def render_rayservice(owner: Owner, spec: LLMDeploymentSpec, *, served_model_name: str | None = None) -> dict[str, Any]:
    """The RayService for an LLMDeployment (without owner references: the operator adopts it)."""
    name = naming.rayservice_name(owner.name)
    args = serving_args(spec, name=owner.name, served_model_name=served_model_name or spec.model.name or owner.name)
    head_labels = naming.labels(owner.name, "ray-head")
    worker_labels = naming.labels(owner.name, naming.COMPONENT_WORKER)
    body_spec: dict[str, Any] = {
        "serveConfigV2": serve_config_v2(args),
        "rayClusterConfig": {
            "rayVersion": spec.ray.ray_version,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {
                "idleTimeoutSeconds": spec.ray.worker_idle_timeout_seconds,
                "upscalingMode": "Default",
            },
            "headGroupSpec": _head_group(spec, head_labels),
            "workerGroupSpecs": [_worker_group(spec, worker_labels)],
        },
    }
    return {
        "apiVersion": RAYSERVICE_API_VERSION,
        "kind": "RayService",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": naming.labels(owner.name, naming.COMPONENT_RAYSERVICE),
            "annotations": {naming.ANNOTATION_SPEC_HASH: spec_hash(body_spec)},
        },
        "spec": body_spec,
    }


def is_cpu(spec: LLMDeploymentSpec) -> bool:
    return spec.accelerator.type == AcceleratorType.CPU
