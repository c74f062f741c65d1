"""Fixtures that run the real operator process against the in-process Kubernetes API emulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.testing.kubeapi import KubeAPI

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


class OperatorProcess:
    """`llmdeploy operator` in a child process, as it runs in its pod."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LLMDEPLOY_STATUS_INTERVAL_S": "0.5",
            "LLMDEPLOY_STATUS_IDLE_S": "0.3",
        }
        cmd = [sys.executable, "-m", "llmdeploy.cli", "operator", "--standalone", "--liveness", "", "--verbose"]
        out = self.log.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeAPI]:
    with KubeAPI(crds=[LLMD_CRD, rayservice_crd()]) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        yield api
        assert api.errors == []


@pytest.fixture
def operator(kube: KubeAPI, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(tmp_path / "kubeconfig", tmp_path / "operator.log")
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


def wait_for(
    condition: Callable[[], Any], *, what: str, timeout: float = 20, operator: OperatorProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if operator is not None and operator.proc is not None and operator.proc.poll() is not None:
            raise AssertionError(f"operator exited while waiting for {what}:\n{operator.output[-4000:]}")
        time.sleep(0.1)
    tail = operator.output[-4000:] if operator else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
