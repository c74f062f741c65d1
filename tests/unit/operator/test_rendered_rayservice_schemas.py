"""Rendered RayServices pass KubeRay's real CRD schema and Ray Serve's own config schema."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmdeploy.operator import naming
from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.render import Owner, render_rayservice
from llmdeploy.serving.config import IMPORT_PATH, ServingArgs

REPO = Path(__file__).resolve().parents[3]
KUBERAY_RAYSERVICE_CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


@cache
def _kuberay_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(KUBERAY_RAYSERVICE_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_openapi_to_jsonschema(version["schema"]["openAPIV3Schema"]))


def _rendered(example: Path) -> dict[str, Any]:
    ((obj, _),) = load_manifests(str(example))
    return render_rayservice(Owner(obj.metadata.name, "default"), obj.spec, served_model_name=obj.served_model_name)


@pytest.mark.skipif(not KUBERAY_RAYSERVICE_CRD.is_file(), reason="KubeRay's RayService CRD (test data) is not present")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_passes_kuberay_rayservice_schema(example: Path) -> None:
    errors = sorted(_kuberay_validator().iter_errors(_rendered(example)), key=str)
    assert errors == [], [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_serve_config_passes_ray_serve_schema(example: Path) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    config = yaml.safe_load(_rendered(example)["spec"]["serveConfigV2"])
    parsed = schema.ServeDeploySchema.model_validate(config)
    (app,) = parsed.applications
    assert app.import_path == IMPORT_PATH
    ServingArgs.model_validate(app.args)  # the serving side accepts what render wrote


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_head_asks_for_no_gpu_and_serve_port_is_named(example: Path) -> None:
    cluster = _rendered(example)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert {"name": "serve", "containerPort": 8000} in container["ports"]
    assert cluster["enableInTreeAutoscaling"] is True


def test_names_longer_than_kuberay_allows_are_shortened_uniquely() -> None:
    a, b = "x" * 60 + "-alpha", "x" * 60 + "-beta"
    assert len(naming.rayservice_name(a)) <= naming.MAX_RAYSERVICE_NAME
    assert naming.rayservice_name(a) != naming.rayservice_name(b)
    assert naming.rayservice_name(a) == naming.rayservice_name(a)
    assert naming.rayservice_name("short") == "short"


def test_secrets_are_referenced_never_inlined() -> None:
    text = yaml.safe_dump(_rendered(REPO / "examples" / "qwen-awq-l4.yaml"))
    assert "secretKeyRef" in text and "llm-cache-redis" in text
    text = yaml.safe_dump(_rendered(REPO / "examples" / "llama-8b-h100.yaml"))
    assert "hf-token" in text and "HF_TOKEN" in text
