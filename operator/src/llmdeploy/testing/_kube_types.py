"""Resource definitions, API errors, selectors and patch helpers for the API emulator."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from llmdeploy.testing._kube_schema import CompiledSchema, FieldError, compile_schema

JSON = dict[str, Any]
_T = TypeVar("_T")
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
StorageKey = tuple[str, str]  # (group, plural): all served versions of a resource share it


def clone(value: _T) -> _T:
    """Deep-copy a JSON value (faster than copy.deepcopy for plain JSON)."""
    return cast(_T, json.loads(json.dumps(value)))


class ApiError(Exception):
    """An error answered as a ``kind: Status`` body, like the apiserver's."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class ScaleSpec:
    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None


@dataclass(frozen=True)
class ResourceDef:
    """One served group/version/resource with everything the emulator needs to know about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    status_subresource: bool = False
    scale: ScaleSpec | None = None
    schema: CompiledSchema | None = None
    custom: bool = False  # backed by a CRD: generation, no strategic merge, PUT needs a version
    selectable_fields: tuple[str, ...] = ()
    list_kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def skey(self) -> StorageKey:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """``plural.group`` as used in NotFound/Conflict messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """``Kind.group`` as used in Invalid messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def has_generation(self) -> bool:
        return self.custom or self.skey == CRD_KEY

    @property
    def subresources(self) -> tuple[str, ...]:
        return (("status",) if self.status_subresource else ()) + (("scale",) if self.scale else ())

    # -- errors naming this resource ---------------------------------------------------------

    def not_found(self, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{self.qualified} "{name}" not found',
            {"name": name, "group": self.group, "kind": self.plural},
        )

    def conflict(
        self,
        name: str,
        why: str = "the object has been modified; please apply your changes to the latest version and try again",
    ) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {self.qualified} "{name}": {why}',
            {"name": name, "group": self.group, "kind": self.plural},
        )

    def invalid(self, name: str, errors: Iterable[FieldError]) -> ApiError:
        errs = list(errors)
        messages = [e.message for e in errs]
        text = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
        causes = [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errs]
        return ApiError(
            422,
            "Invalid",
            f'{self.kind_qualified} "{name}" is invalid: {text}',
            {"name": name, "group": self.group, "kind": self.kind, "causes": causes},
        )


CRD_KEY: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY: StorageKey = ("", "namespaces")


def core_resources() -> list[ResourceDef]:
    """The built-in resources the emulator serves (stored without schema validation)."""
    return [
        ResourceDef("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), status_subresource=True),
        ResourceDef("", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceDef("", "v1", "secrets", "Secret", True, "secret"),
        ResourceDef(
            "", "v1", "services", "Service", True, "service", ("svc",), categories=("all",), status_subresource=True
        ),
        ResourceDef("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
        ResourceDef("", "v1", "pods", "Pod", True, "pod", ("po",), categories=("all",), status_subresource=True),
        ResourceDef("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
        ResourceDef("events.k8s.io", "v1", "events", "Event", True, "event", ("ev",)),
        ResourceDef(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            "customresourcedefinition",
            ("crd", "crds"),
            status_subresource=True,
        ),
    ]


def resource_defs_from_crd(crd: Mapping[str, Any]) -> list[ResourceDef]:
    """Every served version of an apiextensions.k8s.io/v1 CRD; 422 for a malformed CRD."""
    name = str((crd.get("metadata") or {}).get("name") or "")
    crd_def = ResourceDef("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
    spec = crd.get("spec")
    if not isinstance(spec, Mapping):
        raise crd_def.invalid(name, [FieldError("spec", "FieldValueRequired", "Required value")])
    group = str(spec.get("group") or "")
    names = spec.get("names") or {}
    plural, kind = str(names.get("plural") or ""), str(names.get("kind") or "")
    errors: list[FieldError] = []
    if not group:
        errors.append(FieldError("spec.group", "FieldValueRequired", "Required value"))
    if not plural:
        errors.append(FieldError("spec.names.plural", "FieldValueRequired", "Required value"))
    if not kind:
        errors.append(FieldError("spec.names.kind", "FieldValueRequired", "Required value"))
    if plural and group and name != f"{plural}.{group}":
        errors.append(
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        errors.append(
            FieldError(
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: {json.dumps(scope)}: supported values: "Cluster", "Namespaced"',
            )
        )
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            FieldError(
                "spec.versions",
                "FieldValueInvalid",
                'Invalid value: "array": must have exactly one version marked as storage version',
            )
        )
    if errors:
        raise crd_def.invalid(name, errors)
    defs = []
    for version in versions:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        scale = subresources.get("scale")
        openapi = (version.get("schema") or {}).get("openAPIV3Schema")
        defs.append(
            ResourceDef(
                group=group,
                version=str(version["name"]),
                plural=plural,
                kind=kind,
                namespaced=scope == "Namespaced",
                singular=str(names.get("singular") or kind.lower()),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in subresources,
                scale=ScaleSpec(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath"))
                if scale
                else None,
                schema=compile_schema(openapi) if isinstance(openapi, Mapping) else None,
                custom=True,
                selectable_fields=tuple(str(f["jsonPath"]).lstrip(".") for f in version.get("selectableFields") or ()),
                list_kind=str(names.get("listKind") or f"{kind}List"),
            )
        )
    return defs


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first (sort ascending)."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0)
    stage = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    return (stage, -int(match.group(1)), -int(match.group(3) or 0))


# -- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


_SET_TERM = re.compile(r"^([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)$")
_EQ_TERM = re.compile(r"^([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)$")
_EXISTS_TERM = re.compile(r"^(!?)\s*([^\s!=(),]+)$")


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    requirements = []
    for term in _split_terms(text or ""):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(LabelRequirement(match.group(1), match.group(2), values))
        elif match := _EQ_TERM.match(term):
            op = "!=" if match.group(2) == "!=" else "="
            requirements.append(LabelRequirement(match.group(1), op, frozenset([match.group(3)])))
        elif match := _EXISTS_TERM.match(term):
            op = "!exists" if match.group(1) else "exists"
            requirements.append(LabelRequirement(match.group(2), op))
        else:
            raise bad_request(f"unable to parse requirement: {term!r}")
    return requirements


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        text = "" if current is None else (json.dumps(current) if not isinstance(current, str) else current)
        return (text == self.value) != self.negate


def parse_field_selector(text: str | None, rdef: ResourceDef) -> list[FieldRequirement]:
    requirements = []
    for term in _split_terms(text or ""):
        match = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(.*)", term)
        if not match:
            raise bad_request(f"invalid field selector: {term!r}")
        path = match.group(1)
        known = {"metadata.name", "metadata.namespace", *rdef.selectable_fields}
        if rdef.custom and path not in known:
            raise bad_request(
                f'"{path}" is not a known field selector: only ' + ", ".join(f'"{k}"' for k in sorted(known))
            )
        requirements.append(FieldRequirement(path, match.group(2) == "!=", match.group(3)))
    return requirements


# -- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced whole)."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def get_path(obj: Mapping[str, Any], dotted: str) -> Any:
    current: Any = obj
    for part in dotted.lstrip(".").split("."):
        current = current.get(part) if isinstance(current, Mapping) else None
    return current


def set_path(obj: JSON, dotted: str, value: Any) -> None:
    parts = dotted.lstrip(".").split(".")
    current = obj
    for part in parts[:-1]:
        nxt = current.get(part)
        if not isinstance(nxt, dict):
            nxt = current[part] = {}
        current = nxt
    current[parts[-1]] = value


# -- metadata validation ---------------------------------------------------------------------

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def name_errors(name: str, *, label: bool) -> list[FieldError]:
    limit, pattern = (63, _LABEL) if label else (253, _SUBDOMAIN)
    kind = "RFC 1123 label" if label else "RFC 1123 subdomain"
    if len(name) > limit:
        return [
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be no more than {limit} characters',
            )
        ]
    if not pattern.match(name):
        return [
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase {kind} must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end "
                f"with an alphanumeric character (regex used for validation is "
                f"'{pattern.pattern.strip('^$')}')",
            )
        ]
    return []


def _key_errors(field: str, key: Any) -> list[FieldError]:
    text = str(key)
    prefix, _, name = text.rpartition("/")
    if (
        not isinstance(key, str)
        or not name
        or len(name) > 63
        or not _QUALIFIED.match(name)
        or (prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)))
    ):
        return [
            FieldError(
                field,
                "FieldValueInvalid",
                f'Invalid value: "{text}": name part must consist of alphanumeric '
                "characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character, at most 63 characters, with an optional "
                "DNS subdomain prefix and '/'",
            )
        ]
    return []


def meta_errors(meta: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, dict):
        errors.append(FieldError("metadata.labels", "FieldValueTypeInvalid", "Invalid value: must be a map of strings"))
    for key, value in (labels or {}).items() if isinstance(labels, dict) else ():
        errors += _key_errors("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or (value and not _QUALIFIED.match(value)):
            errors.append(
                FieldError(
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character, at most 63 characters",
                )
            )
    annotations = meta.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        errors.append(
            FieldError("metadata.annotations", "FieldValueTypeInvalid", "Invalid value: must be a map of strings")
        )
    elif annotations:
        total = 0
        for key, value in annotations.items():
            errors += _key_errors("metadata.annotations", key)
            if not isinstance(value, str):
                errors.append(
                    FieldError(
                        "metadata.annotations",
                        "FieldValueTypeInvalid",
                        f'Invalid value: "{key}": values must be strings',
                    )
                )
            total += len(str(key)) + len(str(value))
        if total > 256 * 1024:
            errors.append(
                FieldError("metadata.annotations", "FieldValueTooLong", "Too long: must have at most 262144 bytes")
            )
    return errors
