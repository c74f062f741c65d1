"""Names, labels and annotations of the children, as documented constants.

A RayService is named after its LLMDeployment (1:1, deterministic). KubeRay derives longer
names from it (`<name>-raycluster-xxxxx-head-svc`, `<name>-serve-svc`), so it caps RayService
names at 47 characters; longer names are truncated and get a short hash of the full name, so
two long names that share a prefix still differ.
"""

from __future__ import annotations

import hashlib
from typing import Final

from llmdeploy.operator.api import GROUP

MAX_RAYSERVICE_NAME: Final = 47
_HASH_CHARS: Final = 6

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_DEPLOYMENT: Final = f"{GROUP}/deployment"

ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"

MANAGED_BY: Final = "llmdeploy-operator"
PART_OF: Final = "llmdeploy"
COMPONENT_RAYSERVICE: Final = "rayservice"
COMPONENT_WORKER: Final = "llm-worker"


def rayservice_name(deployment_name: str) -> str:
    if len(deployment_name) <= MAX_RAYSERVICE_NAME:
        return deployment_name
    digest = hashlib.sha256(deployment_name.encode()).hexdigest()[:_HASH_CHARS]
    head = deployment_name[: MAX_RAYSERVICE_NAME - _HASH_CHARS - 1].rstrip("-.")
    return f"{head}-{digest}"


def labels(deployment_name: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "llmdeployment",
        LABEL_INSTANCE: deployment_name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
        LABEL_COMPONENT: component,
        LABEL_DEPLOYMENT: deployment_name,
    }


def worker_selector(deployment_name: str) -> str:
    """The label selector of a deployment's worker pods (the /scale subresource's selector)."""
    return f"{LABEL_DEPLOYMENT}={deployment_name},{LABEL_COMPONENT}={COMPONENT_WORKER}"


def serve_service_url(deployment_name: str, namespace: str) -> str:
    """The in-cluster OpenAI base URL: KubeRay's `<rayservice>-serve-svc` on port 8000."""
    return f"http://{rayservice_name(deployment_name)}-serve-svc.{namespace}.svc.cluster.local:8000/v1"
