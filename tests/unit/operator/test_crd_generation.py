"""The CRD is generated from the API models; the committed copy must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmdeploy.operator import api
from llmdeploy.operator.crd import build_crd, render_api_reference, render_crd_yaml

REPO = Path(__file__).resolve().parents[3]


def _walk(node: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, node
    for name, prop in (node.get("properties") or {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / "crds" / "llmdeploy.io_llmdeployments.yaml").read_text()
    assert committed == render_crd_yaml(), (
        "crds/ drifted from api.py: run `llmdeploy crd > crds/llmdeploy.io_llmdeployments.yaml`"
    )


def test_every_spec_and_status_field_is_described() -> None:
    schema = _schema()
    missing = [
        path
        for path, node in _walk(schema["properties"]["spec"], ".spec")
        if not node.get("description") and not path.endswith("[]") and not path.endswith("{}")
    ]
    missing += [
        path
        for path, node in _walk(schema["properties"]["status"], ".status")
        if path.count(".") <= 2 and not node.get("description") and not path.endswith("[]")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or path == "", f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") in {"object", "array"}:
            assert "default" not in node, path


def test_names_subresources_and_columns() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LLMDeployment", "llmdeployments", ["llmd"])
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Model", "Quant", "Ready", "Desired", "Queue", "Status", "Age"]


def test_every_cross_field_rule_reaches_the_crd_as_cel() -> None:
    spec = _schema()["properties"]["spec"]
    found = []
    for path, node in _walk(spec):
        found += [(path, v["rule"]) for v in node.get("x-kubernetes-validations", [])]
    expected = [("." + r.path if r.path else "", r.cel) for r in api.RULES]
    assert sorted(found) == sorted(expected)


def test_crd_parses_as_yaml() -> None:
    assert yaml.safe_load(render_crd_yaml())["kind"] == "CustomResourceDefinition"


def test_committed_api_reference_matches_the_models() -> None:
    committed = (REPO / "docs" / "api.md").read_text()
    assert committed == render_api_reference(), "docs/api.md drifted: run `llmdeploy crd --reference > docs/api.md`"


def test_numeric_bounds_use_openapi_v3_booleans() -> None:
    for path, node in _walk(_schema()):
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(flag, False), bool), f"{path}.{flag} must be a boolean in a CRD"
    target = _schema()["properties"]["spec"]["properties"]["autoscaling"]["properties"]["targetQueueDepth"]
    assert (target["minimum"], target["exclusiveMinimum"]) == (0, True)


def test_crd_yaml_has_no_anchors() -> None:
    assert "&id" not in render_crd_yaml()
