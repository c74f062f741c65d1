"""Fixtures that run the real operator process against the in-process Kubernetes API emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.testing.kubeapi import KubeAPI
from llmdeploy.testing.operator_process import OperatorProcess, free_port, wait_for

__all__ = ["LLMD", "RAYSERVICES", "OperatorProcess", "llmdeployment", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
LLMD_CRD = REPO / "crds" / "llmdeploy.io_llmdeployments.yaml"
REAL_RAYSERVICE_CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
MINIMAL_RAYSERVICE_CRD = Path(__file__).parent / "data" / "rayservice-crd-minimal.yaml"

LLMD = ("llmdeploy.io", "v1alpha1", "llmdeployments")
RAYSERVICES = ("ray.io", "v1", "rayservices")


def rayservice_crd() -> Path:
    """KubeRay's real CRD where the test data is present, else a minimal open schema."""
    return REAL_RAYSERVICE_CRD if REAL_RAYSERVICE_CRD.is_file() else MINIMAL_RAYSERVICE_CRD


def llmdeployment(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "builtin://tiny", "maxModelLen": 512},
        "accelerator": {"type": "cpu"},
    }
    body.update(spec)
    return {
        "apiVersion": "llmdeploy.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeAPI]:
    with KubeAPI(crds=[LLMD_CRD, rayservice_crd()]) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        yield api
        assert api.errors == []


@pytest.fixture
def operator(kube: KubeAPI, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(tmp_path / "kubeconfig", tmp_path / "operator.log", metrics_port=free_port())
    proc.start()
    wait_for(
        lambda: (
            any(r.verb == "watch" and r.resource == "rayservices" for r in kube.requests)
            and any(r.verb == "watch" and r.resource == "llmdeployments" for r in kube.requests)
        ),
        what="the operator to start watching",
        timeout=60,
        operator=proc,
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.output, proc.output[-4000:]
