"""The CustomResourceDefinition of `LLMDeployment`, generated from the pydantic models.

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: every `$ref`
inlined, no `anyOf` for optional fields (`nullable` instead), no `title`, maps as
`additionalProperties`, and the cross-field rules of `api.RULES` as CEL
`x-kubernetes-validations`. Field descriptions flow through, so `kubectl explain` shows them.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from llmdeploy.operator import api

# Printer columns show what an operator on call needs at a glance.
PRINTER_COLUMNS: Final = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source"},
    {"name": "Quant", "type": "string", "jsonPath": ".spec.quantization.method"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "Queue", "type": "number", "jsonPath": ".status.queueDepth"},
    {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED_KEYS: Final = frozenset({"title", "$defs", "definitions"})


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s and turn pydantic idioms into structural-schema idioms."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_resolve(extra, defs)}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            merged = {**_resolve(options[0], defs), **_resolve(rest, defs)}
            if len(options) < len(node["anyOf"]):
                merged.pop("default", None)  # a None default means "absent", not null
            return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: _resolve(prop, defs) for name, prop in value.items()}
        elif (key == "additionalProperties" and isinstance(value, dict)) or key in {"items", "allOf", "oneOf", "not"}:
            out[key] = _resolve(value, defs)
        else:
            out[key] = value
    # Structural schemas forbid `additionalProperties` beside `properties`; the apiserver prunes
    # (and `kubectl apply` with strict field validation rejects) unknown fields instead.
    if "properties" in out:
        out.pop("additionalProperties", None)
    # Structural schemas allow a default only on leaves; object defaults come from the model.
    if out.get("type") in {"object", "array"}:
        out.pop("default", None)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    # JSON Schema's numeric exclusive bounds are booleans beside minimum/maximum in OpenAPI v3.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), int | float) and not isinstance(out.get(flag), bool):
            out[bound] = out.pop(flag)
            out[flag] = True
    return out


def _structural(model: type[BaseModel], *, mode: JsonSchemaMode) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    return schema


def _attach_rules(spec_schema: dict[str, Any]) -> None:
    for rule in api.RULES:
        node = spec_schema
        for part in filter(None, rule.path.split(".")):
            node = node["properties"][part]
        node.setdefault("x-kubernetes-validations", []).append({"rule": rule.cel, "message": rule.message})


def spec_schema() -> dict[str, Any]:
    schema = _structural(api.LLMDeploymentSpec, mode="validation")
    _attach_rules(schema)
    return schema


def status_schema() -> dict[str, Any]:
    schema = _structural(api.LLMDeploymentStatus, mode="serialization")
    schema.pop("required", None)  # the operator fills status over time
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    for prop in schema["properties"].values():
        prop.pop("default", None)
    return schema


def build_crd() -> dict[str, Any]:
    """The whole CRD manifest as a dict, deterministic."""
    schema = {
        "type": "object",
        "description": api.LLMDeployment.__doc__ or "",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "The API version: llmdeploy.io/v1alpha1."},
            "kind": {"type": "string", "description": "LLMDeployment."},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    schema["description"] = (
        "An LLM served on Ray Serve with vLLM: model, quantization, batching, accelerators, "
        "queue-depth autoscaling, prefix-aware routing and a shared response cache."
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "llmdeploy"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Repeated sub-schemas are written out in full: anchors confuse readers and tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml() -> str:
    header = "# Generated from llmdeploy.operator.api by `llmdeploy crd`. Do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100)


def _type_text(node: dict[str, Any]) -> str:
    kind = node.get("type", "")
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if kind == "array":
        return f"list of {_type_text(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_text(node['additionalProperties'])}"
    return str(kind)


def _reference_rows(node: dict[str, Any], path: str, rows: list[str]) -> None:
    required = set(node.get("required", []))
    for name, prop in (node.get("properties") or {}).items():
        field_path = f"{path}.{name}"
        default = prop.get("default")
        bits = [f"`{field_path}`", _type_text(prop), "yes" if name in required else ""]
        bits.append("" if default is None else f"`{json_text(default)}`")
        bits.append(" ".join(str(prop.get("description", "")).split()).replace("|", "\\|"))
        rows.append("| " + " | ".join(bits) + " |")
        target = prop.get("items") if prop.get("type") == "array" else prop
        if isinstance(target, dict) and target.get("properties"):
            _reference_rows(target, field_path + ("[]" if prop.get("type") == "array" else ""), rows)


def json_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_api_reference() -> str:
    """Markdown reference of every field, generated from the same schema as the CRD."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out = [
        "# LLMDeployment API reference (`llmdeploy.io/v1alpha1`)",
        "",
        "Generated from `llmdeploy.operator.api` by `llmdeploy crd --reference`; do not edit.",
        "`kubectl explain llmdeployment.spec --recursive` shows the same descriptions.",
        "",
    ]
    for section in ("spec", "status"):
        rows: list[str] = []
        _reference_rows(schema["properties"][section], section, rows)
        out += [f"## {section}", "", "| field | type | required | default | description |", "|---|---|---|---|---|"]
        out += [*rows, ""]
    rules = [f"- `{r.cel}`: {r.message}" for r in api.RULES]
    out += ["## Cross-field rules (enforced at admission by CEL)", "", *rules, ""]
    return "\n".join(out)
