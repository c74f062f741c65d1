"""values.schema.json: Helm refuses unknown and out-of-range values; the schema, values.yaml and the
README's values table describe the same values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from .helm import OPERATOR_CHART, run_helm, template_args

SCHEMA = json.loads((OPERATOR_CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((OPERATOR_CHART / "values.yaml").read_text())
# Values the README documents as one row: Kubernetes objects passed through whole.
WHOLE_VALUES = frozenset({"resources", "podSecurityContext", "securityContext", "affinity"})
README_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<default>[^|]*) \| (?P<description>[^|]+) \|$")


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{name}" if path else name)
    for keyword in ("items", "additionalProperties"):
        if isinstance(node.get(keyword), dict):
            yield from _schema_nodes(node[keyword], f"{path}[{keyword}]")
    for name, child in node.get("definitions", {}).items():
        yield from _schema_nodes(child, f"#/definitions/{name}")


def _documented_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        child = _resolve(schema["properties"][key])
        if isinstance(value, dict) and "properties" in child and key not in WHOLE_VALUES:
            yield from _documented_keys(value, child, f"{path}.")
        else:
            yield path, value


def _refused(*set_values: str) -> str:
    result = run_helm(*template_args(set_values=set_values), check=False)
    assert result.returncode != 0, f"helm accepted {set_values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    return result.stderr


def test_unknown_values_are_refused() -> None:
    assert "Additional property replicaCount is not allowed" in _refused("replicaCount=2")
    assert "Additional property intervall is not allowed" in _refused("serviceMonitor.intervall=30s")


def test_bad_enum_values_are_refused() -> None:
    stderr = _refused("image.pullPolicy=Sometimes")
    assert 'image.pullPolicy must be one of the following: "Always", "IfNotPresent", "Never"' in stderr
    assert "tolerations.0.effect" in _refused("tolerations[0].key=a", "tolerations[0].effect=Sometimes")


@pytest.mark.parametrize(
    "setting",
    [
        "statusIntervalSeconds=0",
        "metrics.port=80",
        "metrics.port=8081",
        "podSecurityContext.runAsUser=0",
        "securityContext.allowPrivilegeEscalation=true",
        "watchNamespaces[0]=Not_A_Namespace",
    ],
)
def test_out_of_range_values_are_refused(setting: str) -> None:
    _refused(setting)


def test_defaults_and_ci_values_satisfy_the_schema() -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    validator.check_schema(SCHEMA)
    validator.validate(VALUES)
    for path in sorted((OPERATOR_CHART / "ci").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()) or {})


def test_every_schema_node_is_described_and_closed() -> None:
    for path, node in _schema_nodes(SCHEMA):
        if "$ref" not in node:
            assert node.get("description"), f"{path or 'root'} has no description"
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or 'root'} accepts unknown keys"


def test_readme_values_table_documents_every_value_with_its_default() -> None:
    readme = (OPERATOR_CHART / "README.md").read_text()
    rows = {m["key"]: m["default"].strip() for m in map(README_ROW.match, readme.splitlines()) if m}
    expected = dict(_documented_keys(VALUES, SCHEMA))
    assert sorted(rows) == sorted(expected)
    for key, default in expected.items():
        if not isinstance(default, dict | list) or not default:
            assert rows[key] == f"`{json.dumps(default)}`", key
