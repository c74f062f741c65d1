"""Secrets are referenced, never copied: the real operator runs every example, plus a spec with
every SecretKeyRef field set, against the emulator where those Secrets hold sentinel values.
None of the values (raw or base64) may appear in a RayService, in any object's annotations,
in an LLMDeployment's status, in an Event or in the operator's (debug) log; the RayService
reaches each secret only through `valueFrom.secretKeyRef`, and the operator never reads Secrets.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmdeploy.serving import config as sc
from llmdeploy.testing.kubeapi import KubeAPI
from llmdeploy.testing.spec_strategies import secret_ref_paths

from .conftest import LLMD, RAYSERVICES, OperatorProcess, llmdeployment, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# The env var each secret field reaches the serving processes through.
SECRET_ENVS = {sc.HF_TOKEN_ENV, sc.REDIS_URL_ENV, sc.API_KEYS_ENV}


def _sentinel(name: str) -> str:
    return f"SENTINEL-{name}-c0ffee"


def _secret_refs(spec: dict[str, Any]) -> list[dict[str, str]]:
    refs = []
    for path in secret_ref_paths():
        node: Any = spec
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node:
            refs.append(node)
    return refs


def _set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        spec = spec.setdefault(part, {})
    spec[leaf] = value


def _all_secrets_spec() -> dict[str, Any]:
    """The tiny CPU deployment with every secret field the API has set (found by type)."""
    body = llmdeployment("all-secrets", responseCache={"enabled": True, "backend": "redis"})
    for path in secret_ref_paths():
        _set_path(body["spec"], path, {"name": f"s-{path.replace('.', '-').lower()}", "key": "value"})
    return body


def _create_secret(kube: KubeAPI, ref: dict[str, str]) -> list[str]:
    value = _sentinel(f"{ref['name']}.{ref['key']}")
    existing = kube.get("", "v1", "secrets", "default", ref["name"]) or {
        "metadata": {"name": ref["name"], "namespace": "default"},
        "data": {},
    }
    existing["data"][ref["key"]] = base64.b64encode(value.encode()).decode()
    kube.put_object("", "v1", "secrets", existing)
    return [value, existing["data"][ref["key"]]]


def _names_of_env(obj: Any) -> list[dict[str, Any]]:
    """Every container env entry anywhere in `obj`."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "env" and isinstance(value, list):
                found.extend(v for v in value if isinstance(v, dict))
            else:
                found.extend(_names_of_env(value))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_names_of_env(item))
    return found


def test_secret_values_never_leave_their_secrets(kube: KubeAPI, operator: OperatorProcess) -> None:
    bodies = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    bodies.append(_all_secrets_spec())
    invalid = _all_secrets_spec()  # the same refs on a spec the operator refuses: Degraded path
    invalid["metadata"]["name"] = "all-secrets-invalid"
    invalid["spec"]["quantization"] = {"method": "awq"}
    bodies.append(invalid)
    sentinels: list[str] = []
    wanted_refs: set[tuple[str, str]] = set()
    for body in bodies:
        for ref in _secret_refs(body["spec"]):
            sentinels += _create_secret(kube, ref)
            wanted_refs.add((ref["name"], ref["key"]))
    assert {"all-secrets"} <= {b["metadata"]["name"] for b in bodies}
    assert len(wanted_refs) >= len(secret_ref_paths()) + 2, wanted_refs  # examples and every field
    for body in bodies:
        body["metadata"]["namespace"] = "default"
        kube.put_object(*LLMD, body)
    names = [b["metadata"]["name"] for b in bodies]
    wait_for(
        lambda: all((kube.get(*LLMD, "default", n) or {}).get("status", {}).get("observedGeneration") for n in names),
        what="every LLMDeployment reconciled",
        timeout=60,
        operator=operator,
    )
    wait_for(
        lambda: len(kube.objects(*RAYSERVICES, "default")) == len(bodies) - 1,
        what="a RayService per valid LLMDeployment",
        operator=operator,
    )

    rayservices = kube.objects(*RAYSERVICES, "default")
    referenced: set[tuple[str, str]] = set()
    for env in _names_of_env(rayservices):
        if env["name"] in SECRET_ENVS:
            assert "value" not in env, env
            ref = env["valueFrom"]["secretKeyRef"]
            referenced.add((ref["name"], ref["key"]))
    valid_refs = {(r["name"], r["key"]) for b in bodies if b is not invalid for r in _secret_refs(b["spec"])}
    assert referenced == valid_refs, "every secret field of a valid spec reaches a pod by reference"

    places = {
        "RayServices": rayservices,
        "LLMDeployments (spec, annotations, status)": kube.objects(*LLMD, "default"),
        "core Events": kube.objects("", "v1", "events", "default"),
        "events.k8s.io Events": kube.objects("events.k8s.io", "v1", "events", "default"),
        "ConfigMaps": kube.objects("", "v1", "configmaps", "default"),
        "operator log": operator.output,
    }
    assert any(e["reason"] == "InvalidSpec" for e in places["core Events"])  # the Degraded path ran
    assert "DEBUG" in operator.output or "debug" in operator.output.lower()  # the log is verbose
    for where, content in places.items():
        text = content if isinstance(content, str) else json.dumps(content)
        leaked = [s for s in sentinels if s in text]
        assert leaked == [], f"secret values in {where}: {leaked}"
    # The operator never reads Secrets at all (the test's own writes bypass HTTP).
    assert [r for r in kube.requests if r.resource == "secrets"] == []
