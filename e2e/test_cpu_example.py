"""examples/tiny-cpu.yaml on a real cluster: Ready, answering OpenAI requests through its
`<name>-serve-svc` Service, scaled with `kubectl scale`, and garbage-collected on delete.

The tests run in file order and share one LLMDeployment (each step needs the previous one).
"""

from __future__ import annotations

import json
import re
import selectors
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Kubectl

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-cpu.yaml"
NAME = "tiny"
SERVE_PORT = 8000
SCALE_TIMEOUT_S = 180
GC_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120


def _poll(condition: Callable[[], Any], *, what: str, timeout_s: float, interval_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def _get(kubectl: Kubectl, kind: str, namespace: str, name: str = NAME) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    return found


@pytest.fixture(scope="module")
def tiny(kubectl: Kubectl, e2e_namespace: str, serving_image: str) -> Iterator[str]:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = e2e_namespace
    if serving_image:
        manifest["spec"].setdefault("ray", {})["image"] = serving_image
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    yield NAME
    kubectl("delete", "llmdeployment", NAME, "-n", e2e_namespace, "--ignore-not-found", "--wait=false")


@contextmanager
def port_forward(namespace: str, service: str, port: int, timeout_s: float = 30) -> Iterator[int]:
    """`kubectl port-forward svc/<service> :<port>`; yields the local port."""
    binary = shutil.which("kubectl") or "kubectl"
    proc = subprocess.Popen(
        [binary, "port-forward", "-n", namespace, f"svc/{service}", f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        local = None
        while local is None and time.monotonic() < deadline and proc.poll() is None:
            if selector.select(timeout=1):
                match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", proc.stdout.readline())
                local = int(match.group(1)) if match else None
        selector.close()
        if local is None:
            stderr = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            pytest.fail(f"kubectl port-forward to svc/{service} did not start: {stderr}")
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_tiny_becomes_ready(kubectl: Kubectl, e2e_namespace: str, tiny: str, ready_timeout_s: float) -> None:
    result = subprocess.run(
        [
            shutil.which("kubectl") or "kubectl",
            "wait",
            "--for=condition=Ready",
            f"llmdeployment/{tiny}",
            "-n",
            e2e_namespace,
            f"--timeout={int(ready_timeout_s)}s",
        ],
        capture_output=True,
        text=True,
        timeout=ready_timeout_s + 60,
        check=False,
    )
    if result.returncode != 0:
        described = subprocess.run(
            [shutil.which("kubectl") or "kubectl", "describe", "llmdeployment", tiny, "-n", e2e_namespace],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        pytest.fail(f"{tiny} did not become Ready: {result.stderr}\n{described.stdout}")
    status = _get(kubectl, "llmdeployment", e2e_namespace)["status"]
    assert status["phase"] == "Ready"
    assert status["rayServiceName"] == tiny
    assert status["endpoint"] == f"http://{tiny}-serve-svc.{e2e_namespace}.svc.cluster.local:{SERVE_PORT}/v1"
    rayservice = _get(kubectl, "rayservice", e2e_namespace, status["rayServiceName"])
    (owner,) = rayservice["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("LLMDeployment", tiny, True)


def test_openai_chat_completion_through_the_serve_service(e2e_namespace: str, tiny: str) -> None:
    with port_forward(e2e_namespace, f"{tiny}-serve-svc", SERVE_PORT) as local:
        base = f"http://127.0.0.1:{local}/v1"
        with urllib.request.urlopen(f"{base}/models", timeout=REQUEST_TIMEOUT_S) as response:
            models = [m["id"] for m in json.loads(response.read())["data"]]
        assert models, "the OpenAI API lists no model"
        answer = _post_json(
            f"{base}/chat/completions",
            {"model": models[0], "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
        )
    (choice,) = answer["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] >= 1


def test_kubectl_scale_sets_the_desired_replicas(kubectl: Kubectl, e2e_namespace: str, tiny: str) -> None:
    kubectl("scale", "llmd", tiny, "-n", e2e_namespace, "--replicas", "2")
    _poll(
        lambda: _get(kubectl, "llmdeployment", e2e_namespace)["status"].get("desiredReplicas") == 2,
        what="status.desiredReplicas 2",
        timeout_s=SCALE_TIMEOUT_S,
    )
    assert _get(kubectl, "llmdeployment", e2e_namespace)["spec"]["replicas"] == 2
    groups = _get(kubectl, "rayservice", e2e_namespace)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [group["replicas"] for group in groups] == [2]


def test_delete_garbage_collects_the_rayservice(kubectl: Kubectl, e2e_namespace: str, tiny: str) -> None:
    kubectl("delete", "llmdeployment", tiny, "-n", e2e_namespace, "--wait=true", "--timeout=120s", timeout_s=180)
    _poll(
        lambda: not kubectl("get", "rayservice", tiny, "-n", e2e_namespace, "--ignore-not-found", "-o", "name"),
        what=f"RayService {tiny} to be garbage-collected",
        timeout_s=GC_TIMEOUT_S,
    )
