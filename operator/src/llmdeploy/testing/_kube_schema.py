"""CRD structural-schema handling for the Kubernetes API emulator.

Mirrors what kube-apiserver does with a CRD version's ``openAPIV3Schema`` on every write:
prune unknown fields (unless ``x-kubernetes-preserve-unknown-fields``), drop non-nullable nulls,
apply ``default``s, validate with JSON Schema (OpenAPI v3 is Draft 4 plus ``nullable`` and the
``x-kubernetes-*`` extensions), then evaluate CEL ``x-kubernetes-validations`` rules with
``cel-python`` when it is installed. Errors are rendered the way the apiserver words them
(``spec.replicas: Invalid value: ...``).

Not covered: ``format`` checks, validation ratcheting, ``x-kubernetes-list-type`` uniqueness,
the apiserver's CEL cost budget and Kubernetes-specific CEL libraries (quantity, url, ip, ...).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

try:  # CEL is optional: without it, x-kubernetes-validations rules are not evaluated.
    import celpy
    import celpy.celtypes
    from celpy.adapter import json_to_cel

    CEL_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where cel-python is not installed
    CEL_AVAILABLE = False

JSON = dict[str, Any]
_OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass(frozen=True)
class FieldError:
    """One field-level failure, as in ``metav1.StatusCause``."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, ...
    detail: str  # the message after "<field>: "

    @property
    def message(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail


def json_path(parts: Sequence[str | int]) -> str:
    """Render a path the way the apiserver does: ``spec.items[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict | list) else f'"{_type_name(value)}"'


def to_jsonschema(node: Mapping[str, Any]) -> JSON:
    """Translate one OpenAPI v3 (structural) schema node into a Draft 4 JSON Schema."""
    out: JSON = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in (
            "nullable",
            "default",
            "example",
            "externalDocs",
            "description",
            "format",
        ):
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if any(combinator in out for combinator in ("allOf", "anyOf", "oneOf")):
            return {"anyOf": [{"type": "null"}, out]}  # a null is not judged by sub-schemas
    return out


class CompiledSchema:
    """A CRD version's openAPIV3Schema, ready to prune, default and validate objects."""

    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self.openapi: Mapping[str, Any] = openapi
        self.validator = jsonschema.Draft4Validator(to_jsonschema(openapi))
        self._rule_nodes: set[int] = set()  # ids of schema nodes with CEL rules at or below
        self._mark_rules(openapi)

    # -- structure walking -------------------------------------------------------------------

    def _mark_rules(self, node: Mapping[str, Any]) -> bool:
        found = bool(node.get("x-kubernetes-validations"))
        for sub in _children(node):
            found = self._mark_rules(sub) or found
        if found:
            self._rule_nodes.add(id(node))
        return found

    @property
    def has_rules(self) -> bool:
        return id(self.openapi) in self._rule_nodes

    # -- the write pipeline ------------------------------------------------------------------

    def prune(self, obj: JSON) -> None:
        """Drop unknown fields and non-nullable nulls, in place (root metadata is kept)."""
        _prune(obj, self.openapi, root=True)

    def default(self, obj: JSON) -> None:
        """Apply schema defaults to absent fields, in place."""
        _default(obj, self.openapi, root=True)

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        errors = [
            _field_error(err)
            for err in self.validator.iter_errors(obj)
            if not (err.absolute_path and err.absolute_path[0] == "metadata")
        ]
        errors.sort(key=lambda e: e.field)
        if CEL_AVAILABLE and self.has_rules:
            if any(e.reason == "FieldValueTypeInvalid" for e in errors):  # as the apiserver does
                errors.append(
                    FieldError(
                        "<nil>",
                        "FieldValueInvalid",
                        (
                            'Invalid value: "null": some validation rules were not checked because the '
                            "object was invalid; correct the existing errors to complete validation"
                        ),
                    )
                )
            else:
                errors.extend(self._check_rules(obj, old, self.openapi, []))
        return errors

    def _check_rules(
        self, value: Any, old: Any, node: Mapping[str, Any], path: list[str | int]
    ) -> Iterator[FieldError]:
        if id(node) not in self._rule_nodes or value is None:
            return
        for rule in node.get("x-kubernetes-validations") or ():
            error = _evaluate_rule(rule, value, old, node, path)
            if error is not None:
                yield error
        if isinstance(value, dict):
            props: Mapping[str, Any] = node.get("properties") or {}
            extra = node.get("additionalProperties")
            for key, sub_value in value.items():
                sub = props.get(key, extra if isinstance(extra, Mapping) else None)
                if sub is not None and not (not path and key == "metadata"):
                    sub_old = old.get(key) if isinstance(old, dict) else None
                    yield from self._check_rules(sub_value, sub_old, sub, [*path, key])
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            items: Mapping[str, Any] = node["items"]
            olds = _correlate_list(value, old, node)
            for index, item in enumerate(value):
                yield from self._check_rules(item, olds[index], items, [*path, index])


def _children(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (node.get("properties") or {}).values()
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping):
            yield node[key]
    for key in ("allOf", "anyOf", "oneOf"):
        yield from node.get(key) or ()


def _correlate_list(value: list[Any], old: Any, node: Mapping[str, Any]) -> list[Any]:
    """Old items for transition rules: only map-type lists correlate (by their keys)."""
    if not isinstance(old, list) or node.get("x-kubernetes-list-type") != "map":
        return [None] * len(value)
    keys = node.get("x-kubernetes-list-map-keys") or []

    def key_of(item: Any) -> tuple[Any, ...] | None:
        return tuple(item.get(k) for k in keys) if isinstance(item, dict) else None

    by_key = {key_of(item): item for item in old}
    return [by_key.get(key_of(item)) for item in value]


def _prune(value: Any, node: Mapping[str, Any], root: bool = False) -> None:
    if isinstance(value, dict):
        props: Mapping[str, Any] = node.get("properties") or {}
        extra = node.get("additionalProperties")
        preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
        embedded = root or bool(node.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            if embedded and key in ("apiVersion", "kind", "metadata"):
                continue  # ObjectMeta is the apiserver's business, not the schema's
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is None:
                if not (preserve or extra is True):
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            _prune(value[key], sub)
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        for item in value:
            _prune(item, node["items"])


def _default(value: Any, node: Mapping[str, Any], root: bool = False) -> None:
    if isinstance(value, dict):
        props: Mapping[str, Any] = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, sub_value in value.items():
            if root and key == "metadata":
                continue
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                _default(sub_value, sub)
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        for item in value:
            _default(item, node["items"])


def _field_error(err: jsonschema.ValidationError) -> FieldError:
    parts = list(err.absolute_path)
    path = json_path(parts)
    value = err.instance
    kind = err.validator
    arg = err.validator_value
    where = path or "body"
    if kind == "required":
        match = re.match(r"^'(.*)' is a required property$", err.message)
        missing = match.group(1) if match else str(arg)
        return FieldError(json_path([*parts, missing]), "FieldValueRequired", "Required value")
    if kind == "type":
        expected = " or ".join(arg) if isinstance(arg, list) else arg
        return FieldError(
            path,
            "FieldValueTypeInvalid",
            f'Invalid value: "{_type_name(value)}": {where} in body must be of type {expected}: {_show(value)}',
        )
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in arg)
        return FieldError(
            path, "FieldValueNotSupported", f"Unsupported value: {_show(value)}: supported values: {supported}"
        )
    if kind in ("minimum", "maximum"):
        schema = err.schema if isinstance(err.schema, Mapping) else {}
        strict = bool(schema.get(f"exclusive{kind.capitalize()}"))
        relation = ("greater than" if kind == "minimum" else "less than") + ("" if strict else " or equal to")
        return FieldError(
            path, "FieldValueInvalid", f"Invalid value: {_show(value)}: {where} in body should be {relation} {arg}"
        )
    if kind == "maxLength":
        return FieldError(path, "FieldValueTooLong", f"Too long: may not be longer than {arg}")
    if kind == "minLength":
        return FieldError(
            path,
            "FieldValueInvalid",
            f"Invalid value: {_show(value)}: {where} in body should be at least {arg} chars long",
        )
    if kind == "pattern":
        return FieldError(
            path, "FieldValueInvalid", f"Invalid value: {_show(value)}: {where} in body should match '{arg}'"
        )
    if kind == "maxItems":
        return FieldError(path, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {arg} items")
    if kind == "minItems":
        return FieldError(
            path, "FieldValueInvalid", f"Invalid value: {len(value)}: {where} in body should have at least {arg} items"
        )
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: {err.message}")


# -- CEL -------------------------------------------------------------------------------------

_cel_lock = threading.Lock()
_cel_env: Any = None
_cel_programs: dict[str, Any] = {}


def _cel_program(expression: str) -> Any:
    global _cel_env
    with _cel_lock:
        if expression not in _cel_programs:
            if _cel_env is None:
                _cel_env = celpy.Environment()
            _cel_programs[expression] = _cel_env.program(_cel_env.compile(expression))
        return _cel_programs[expression]


def _typed_for_cel(value: Any, node: Mapping[str, Any]) -> Any:
    """Make JSON numbers match the schema's types (CEL does not compare int with double)."""
    if isinstance(value, int) and not isinstance(value, bool) and node.get("type") == "number":
        return float(value)
    if isinstance(value, dict):
        props: Mapping[str, Any] = node.get("properties") or {}
        extra = node.get("additionalProperties")
        result = {}
        for key, sub_value in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else {})
            result[key] = _typed_for_cel(sub_value, sub)
        return result
    if isinstance(value, list):
        items = node.get("items")
        return [_typed_for_cel(item, items if isinstance(items, Mapping) else {}) for item in value]
    return value


def _evaluate_rule(
    rule: Mapping[str, Any], value: Any, old: Any, node: Mapping[str, Any], path: list[str | int]
) -> FieldError | None:
    expression = str(rule.get("rule", ""))
    transition = bool(_OLD_SELF.search(expression))
    if transition and old is None:
        return None  # transition rules only run on updates where the old value exists
    field_path = str(rule.get("fieldPath") or "").lstrip(".")
    target = json_path(path) + (("." if path else "") + field_path if field_path else "")
    activation = {"self": json_to_cel(_typed_for_cel(value, node))}
    if transition:
        activation["oldSelf"] = json_to_cel(_typed_for_cel(old, node))
    try:
        result = _cel_program(expression).evaluate(activation)
    except Exception as exc:  # celpy raises CELEvalError or returns it; both are rule failures
        result = exc
    if isinstance(result, celpy.celtypes.BoolType) and bool(result):
        return None
    kind = str(node.get("type") or "object")
    if isinstance(result, Exception):
        detail = f"{result.args[0] if result.args else result} evaluating rule: {expression}"
        return FieldError(target, "FieldValueInvalid", f'Invalid value: "{kind}": {detail}')
    message = str(rule.get("message") or f"failed rule: {expression}")
    if rule.get("messageExpression"):  # the apiserver falls back to message on failure
        with contextlib.suppress(Exception):
            message = str(_cel_program(str(rule["messageExpression"])).evaluate(activation))
    reason = str(rule.get("reason") or "FieldValueInvalid")
    if reason == "FieldValueForbidden":
        return FieldError(target, reason, f"Forbidden: {message}")
    if reason == "FieldValueRequired":
        return FieldError(target, reason, f"Required value: {message}")
    if reason == "FieldValueDuplicate":
        return FieldError(target, reason, f"Duplicate value: {message}")
    return FieldError(target, "FieldValueInvalid", f'Invalid value: "{kind}": {message}')


# -- caching ---------------------------------------------------------------------------------


_compiled_lock = threading.Lock()
_compiled: dict[str, CompiledSchema] = {}


def compile_schema(openapi: Mapping[str, Any]) -> CompiledSchema:
    """Compile (or fetch from the process-wide cache) a CRD version's openAPIV3Schema."""
    text = json.dumps(openapi, sort_keys=True)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    with _compiled_lock:
        compiled = _compiled.get(fingerprint)
        if compiled is None:
            compiled = _compiled[fingerprint] = CompiledSchema(json.loads(text))
        return compiled
