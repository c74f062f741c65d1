"""Hypothesis strategies for `LLMDeploymentSpec` bodies: valid ones, and one-fault mutations of them.

Owns: ``valid_spec_bodies()``, camelCase spec dicts as a user would write them, derived from
the pydantic models in ``llmdeploy.operator.api`` (every field, its type, enum values, numeric
bounds and string patterns come from the model's own metadata), with the few fields whose
meaning the schema cannot express (model sources, a quantization the accelerator can run,
weights that fit, tensor parallelism that divides the heads, the cross-field rules) drawn so
that the spec is valid; and ``mutations``, a catalogue of single faults that make a valid body
invalid, each tagged with the field it breaks and where it must be caught (admission or the
operator's validation). Used by the fuzz tests and the operator-reaction tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import NoneType, UnionType
from typing import Any, Final, Literal, Union, get_args, get_origin

import annotated_types
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llmdeploy.operator import quantization as q
from llmdeploy.operator.accelerators import ACCELERATORS, AcceleratorType
from llmdeploy.operator.api import LLMDeploymentSpec, SecretKeyRef
from llmdeploy.operator.validation import GPU_MEMORY_UTILIZATION

__all__ = [
    "MUTATIONS",
    "Mutation",
    "Stage",
    "mutated_spec_bodies",
    "secret_ref_paths",
    "valid_spec_bodies",
]

JSON = dict[str, Any]

# Where the generic walker stops recursing into optional sub-objects (keeps examples small).
_OPTIONAL_P: Final = 0.5
_HUB_ID: Final = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,20}/[A-Za-z][A-Za-z0-9_-]{0,30}\Z")
_DNS_LABEL: Final = st.from_regex(r"\A[a-z]([-a-z0-9]{0,20}[a-z0-9])?\Z")
_VALID_SOURCES: Final = st.one_of(
    _HUB_ID,
    st.builds(lambda b, p: f"s3://{b}/{p}", st.from_regex(r"\A[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]\Z"), _DNS_LABEL),
    st.builds(lambda c, p: f"pvc://{c}/{p}", _DNS_LABEL, _DNS_LABEL),
    st.sampled_from(["builtin://tiny", "builtin://gpu-regime"]),
    st.builds(lambda p: f"/models/{p}", _DNS_LABEL),
)


# -- the generic walker over the pydantic models ------------------------------------------------


def _alias(name: str, info: FieldInfo) -> str:
    return info.alias or name


def _bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(meta, attr, None)
            if value is not None:
                out[attr] = value
        if isinstance(meta, annotated_types.MaxLen):
            out["max_length"] = meta.max_length
        if isinstance(meta, annotated_types.MinLen):
            out["min_length"] = meta.min_length
    return out


def _int_strategy(b: dict[str, Any]) -> st.SearchStrategy[int]:
    low = b.get("ge", b["gt"] + 1 if "gt" in b else -(10**6))
    high = b.get("le", b["lt"] - 1 if "lt" in b else 10**6)
    # Both ends and the middle: bounds are where schemas and models disagree.
    return st.one_of(st.sampled_from([low, high]), st.integers(low, high))


def _float_strategy(b: dict[str, Any]) -> st.SearchStrategy[float]:
    low = b.get("ge", b.get("gt", -1e6))
    high = b.get("le", b.get("lt", 1e6))
    return st.floats(
        low, high, exclude_min="gt" in b, exclude_max="lt" in b, allow_nan=False, allow_infinity=False
    ).map(lambda x: float(x) if not x.is_integer() else int(x))


def _str_strategy(b: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = b.get("min_length", 0), b.get("max_length", 64)
    if "pattern" in b:
        pattern = b["pattern"]
        anchored = pattern.removeprefix("^").removesuffix("$")
        return st.from_regex(rf"\A(?:{anchored})\Z").filter(lambda s: low <= len(s) <= high)
    return st.text(st.characters(codec="utf-8"), min_size=low, max_size=min(high, 40))


def _for_annotation(annotation: Any, info: FieldInfo) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        options = [a for a in get_args(annotation) if a is not NoneType]
        (inner,) = options
        return _for_annotation(inner, info)
    if origin is list:
        (item,) = get_args(annotation)
        high = min(_bounds(info).get("max_length", 3), 3)
        return st.lists(_for_annotation(item, FieldInfo()), max_size=high)
    if origin is dict:
        return st.dictionaries(_DNS_LABEL, _DNS_LABEL, max_size=2)
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from([m.value for m in annotation])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_bodies(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return _int_strategy(_bounds(info))
    if annotation is float:
        return _float_strategy(_bounds(info))
    if annotation is str:
        return _str_strategy(_bounds(info))
    raise TypeError(f"no strategy for {annotation!r}")  # a new field type: teach the walker


def model_bodies(model: type[BaseModel]) -> st.SearchStrategy[JSON]:
    """Wire-form (camelCase) bodies of `model`: required fields always, optional ones sometimes."""

    @st.composite
    def build(draw: st.DrawFn) -> JSON:
        body: JSON = {}
        for name, info in model.model_fields.items():
            if info.is_required() or draw(st.floats(0, 1)) < _OPTIONAL_P:
                body[_alias(name, info)] = draw(_for_annotation(info.annotation, info))
        return body

    return build()


# -- the meaning the schema cannot express ------------------------------------------------------


def _runnable_methods(kind: AcceleratorType) -> list[str]:
    cc = ACCELERATORS[kind].compute_capability
    if cc is None:
        return ["none", *sorted(q.CPU_METHODS)]
    return ["none", *sorted(m for m, need in q.MIN_CAPABILITY.items() if need <= cc)]


def _allowed_kv(kind: AcceleratorType) -> list[str]:
    cc = ACCELERATORS[kind].compute_capability
    return [d.value for d in q.KVCacheDtype if not (d == q.KVCacheDtype.BFLOAT16 and cc is not None and cc < 80)]


def _fitting_billions(kind: AcceleratorType, count: int, method: str) -> float:
    """The largest model whose weights fit with room to spare, in billions of parameters."""
    acc = ACCELERATORS[kind]
    assert acc.memory_gib is not None
    per_param = q.WEIGHT_BYTES_PER_PARAM.get(method, 2.0)
    return acc.memory_gib * GPU_MEMORY_UTILIZATION * count * 2**30 / 1e9 / per_param * 0.8


def _set_in(body: JSON, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _get_in(body: JSON, path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@st.composite
def valid_spec_bodies(draw: st.DrawFn) -> JSON:
    """Spec bodies that admission accepts and the operator serves (validation reports no error)."""
    body = draw(model_bodies(LLMDeploymentSpec))
    kind = AcceleratorType(draw(st.sampled_from([a.value for a in AcceleratorType])))
    acc = body.setdefault("accelerator", {})
    acc["type"] = kind.value
    count = 1 if kind == AcceleratorType.CPU else draw(st.sampled_from([1, 2, 4, 8]))
    acc["count"] = count
    method = draw(st.sampled_from(_runnable_methods(kind)))
    body["quantization"] = {"method": method, "kvCacheDtype": draw(st.sampled_from(_allowed_kv(kind)))}
    model = body["model"]
    model["source"] = draw(_VALID_SOURCES)
    if "draft" in model:
        model["draft"]["source"] = draw(_VALID_SOURCES)
    if ACCELERATORS[kind].memory_gib is not None:
        # Declared size always: a hub id that happens to read "-70b" must not decide the fit.
        model["parametersBillions"] = draw(
            st.floats(0.01, _fitting_billions(kind, count, method), allow_nan=False).map(lambda x: round(x, 2) or 0.01)
        )
    if "attentionHeads" in model:
        model["attentionHeads"] = count * draw(st.integers(1, 4096 // count))
    scaling = body.get("autoscaling")
    if scaling:
        low, high = scaling.get("minReplicas", 1), scaling.get("maxReplicas", 4)
        scaling["minReplicas"], scaling["maxReplicas"] = min(low, high), max(low, high)
    cache = body.get("responseCache")
    if cache and cache.get("backend") == "redis" and "redisUrlSecret" not in cache:
        cache["redisUrlSecret"] = draw(model_bodies(SecretKeyRef))
    batching = body.get("batching") or {}
    seqs, tokens = batching.get("maxNumSeqs"), batching.get("maxNumBatchedTokens")
    if seqs is not None and tokens is not None and tokens < seqs:
        batching["maxNumBatchedTokens"] = seqs if seqs >= 16 else 16
    length = model.get("maxModelLen")
    tokens = batching.get("maxNumBatchedTokens")
    if length is not None and tokens is not None and batching.get("chunkedPrefill") is False and tokens < length:
        batching["chunkedPrefill"] = True
    return body


def secret_ref_paths(model: type[BaseModel] = LLMDeploymentSpec, prefix: str = "") -> list[str]:
    """Dotted wire paths of every `SecretKeyRef` field (new secret fields are found by type)."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{_alias(name, info)}"
        for arg in (info.annotation, *get_args(info.annotation)):
            if arg is SecretKeyRef:
                paths.append(path)
            elif isinstance(arg, type) and issubclass(arg, BaseModel):
                paths.extend(secret_ref_paths(arg, f"{path}."))
    return sorted(set(paths))


# -- faults -------------------------------------------------------------------------------------


class Stage(StrEnum):
    """Where a fault must be caught."""

    ADMISSION = "admission"  # the CRD's schema or CEL rules (and the models agree)
    VALIDATION = "validation"  # `llmdeploy.operator.validation`: a Degraded condition


@dataclass(frozen=True)
class Mutation:
    """One fault: `apply` breaks a valid body; `field` is the dotted path a message must name."""

    name: str
    stage: Stage
    field: str
    apply: Callable[[st.DrawFn, JSON], None]


def _numeric_bounds() -> list[tuple[str, FieldInfo, dict[str, Any]]]:
    out = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}{_alias(name, info)}"
            inner = [a for a in (info.annotation, *get_args(info.annotation)) if a is not NoneType]
            sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is not None and get_origin(info.annotation) is not list:
                walk(sub, f"{path}.")
            elif any(a in (int, float) for a in inner) and (b := _bounds(info)):
                out.append((path, info, b))

    walk(LLMDeploymentSpec, "")
    return out


def _out_of_range(path: str, info: FieldInfo, b: dict[str, Any]) -> Mutation:
    is_int = int in (info.annotation, *get_args(info.annotation))
    step = 1 if is_int else 0.5

    def apply(draw: st.DrawFn, body: JSON) -> None:
        choices = []
        if "ge" in b:
            choices.append(b["ge"] - step)
        if "gt" in b:
            choices.append(b["gt"])
        if "le" in b:
            choices.append(b["le"] + step)
        if "lt" in b:
            choices.append(b["lt"])
        value = draw(st.sampled_from(choices))
        _set_in(body, path, int(value) if is_int else value)

    return Mutation(f"out of range: {path}", Stage.ADMISSION, path, apply)


# Values of the wrong JSON type for a field of each type ("3" and true are not integers).
_WRONG: Final[dict[type, list[Any]]] = {
    int: ["3", True, 1.5, [1], {"a": 1}],
    float: ["0.5", True, [1], {"a": 1}],
    bool: ["yes", "true", 1, [True]],
}


def _wrong_type(path: str, kind: type) -> Mutation:
    def apply(draw: st.DrawFn, body: JSON) -> None:
        _set_in(body, path, draw(st.sampled_from(_WRONG[kind])))

    return Mutation(f"wrong type: {path}", Stage.ADMISSION, path, apply)


def _set(path: str, value: Any) -> Callable[[st.DrawFn, JSON], None]:
    def apply(draw: st.DrawFn, body: JSON) -> None:
        _set_in(body, path, value)

    return apply


def _drop_redis_secret(draw: st.DrawFn, body: JSON) -> None:
    cache = body.setdefault("responseCache", {})
    cache["backend"] = "redis"
    cache.pop("redisUrlSecret", None)


def _inverted_replicas(draw: st.DrawFn, body: JSON) -> None:
    low = draw(st.integers(2, 1000))
    body["autoscaling"] = {**body.get("autoscaling", {}), "minReplicas": low, "maxReplicas": low - 1}


def _tokens_below_seqs(draw: st.DrawFn, body: JSON) -> None:
    seqs = draw(st.integers(17, 4096))
    body["batching"] = {**body.get("batching", {}), "maxNumSeqs": seqs, "maxNumBatchedTokens": seqs - 1}


def _prefill_too_small(draw: st.DrawFn, body: JSON) -> None:
    length = draw(st.integers(17, 1_048_576))
    body["model"]["maxModelLen"] = length
    tokens = draw(st.integers(16, length - 1))
    seqs = body.get("batching", {}).get("maxNumSeqs")
    body["batching"] = {**body.get("batching", {}), "maxNumBatchedTokens": tokens, "chunkedPrefill": False}
    if seqs is not None and seqs > tokens:
        body["batching"]["maxNumSeqs"] = tokens


def _unrunnable_quantization(draw: st.DrawFn, body: JSON) -> None:
    kind = AcceleratorType(body["accelerator"]["type"])
    runnable = set(_runnable_methods(kind))
    options = sorted(m.value for m in q.QuantizationMethod if m.value not in runnable)
    if not options:  # every method runs here: move to an older GPU first
        body["accelerator"] = {**body["accelerator"], "type": AcceleratorType.NVIDIA_T4.value}
        body["model"]["parametersBillions"] = 0.5
        options = sorted(
            m.value for m in q.QuantizationMethod if m.value not in _runnable_methods(AcceleratorType.NVIDIA_T4)
        )
    body["quantization"] = {**body.get("quantization", {}), "method": draw(st.sampled_from(options))}


def _weights_do_not_fit(draw: st.DrawFn, body: JSON) -> None:
    kind = AcceleratorType(draw(st.sampled_from([a.value for a in AcceleratorType if ACCELERATORS[a].is_gpu])))
    count = draw(st.sampled_from([1, 2, 4, 8]))
    body["accelerator"] = {"type": kind.value, "count": count}
    body["quantization"] = {"method": "none"}
    body["model"].pop("attentionHeads", None)
    acc = ACCELERATORS[kind]
    assert acc.memory_gib is not None
    need = acc.memory_gib * GPU_MEMORY_UTILIZATION * count * 2**30 / 1e9 / 2.0
    body["model"]["parametersBillions"] = draw(st.floats(math.ceil(need * 1.01), 10_000))


def _heads_not_divisible(draw: st.DrawFn, body: JSON) -> None:
    count = draw(st.sampled_from([2, 4, 8]))
    kind = draw(st.sampled_from([a.value for a in AcceleratorType if ACCELERATORS[a].is_gpu]))
    body["accelerator"] = {"type": kind, "count": count}
    body["quantization"] = {"method": "none"}
    body["model"]["parametersBillions"] = 0.5
    body["model"]["attentionHeads"] = draw(st.integers(1, 4096).filter(lambda h: h % count != 0))


def _cpu_tensor_parallel(draw: st.DrawFn, body: JSON) -> None:
    body["accelerator"] = {"type": "cpu", "count": draw(st.integers(2, 8))}
    body["quantization"] = {"method": "none"}
    body["model"].pop("attentionHeads", None)


def _bad_source(path: str) -> Callable[[st.DrawFn, JSON], None]:
    def apply(draw: st.DrawFn, body: JSON) -> None:
        bad = draw(
            st.one_of(
                st.sampled_from(["http://x/y", "s3://", "pvc://", "builtin://huge", "a/b/c", "-x", "gs://b/p"]),
                st.builds(lambda s: f"ftp://{s}", _DNS_LABEL),
                st.text(min_size=1, max_size=40).filter(lambda s: re.search(r"[^A-Za-z0-9._/-]", s) is not None),
            )
        )
        if path == "model.draft.source":
            body["model"]["draft"] = {**(body["model"].get("draft") or {}), "source": bad}
        else:
            body["model"]["source"] = bad

    return apply


def _bad_quantity(draw: st.DrawFn, body: JSON) -> None:
    # Each of these once passed the spec's pattern and failed KubeRay's (or a pod's) schema.
    bad = draw(st.sampled_from(["lots", "-1", "1.2.3", "4iB", "0EE", "+81.7.Kn", "-4+4", "1Ki5"]))
    body.setdefault("ray", {})["headResources"] = {"cpu": bad, "memory": "1Gi"}


def _unknown_field(draw: st.DrawFn, body: JSON) -> None:
    body["model"]["quantisation"] = "fp8"  # a typo of a real field, one level down


MUTATIONS: Final[tuple[Mutation, ...]] = (
    *(_out_of_range(path, info, b) for path, info, b in _numeric_bounds()),
    _wrong_type("replicas", int),
    _wrong_type("accelerator.count", int),
    _wrong_type("autoscaling.targetQueueDepth", float),
    _wrong_type("routing.prefixAware", bool),
    _wrong_type("model.trustRemoteCode", bool),
    Mutation("unknown enum: accelerator.type", Stage.ADMISSION, "accelerator.type", _set("accelerator.type", "tpu-v5")),
    Mutation(
        "unknown enum: quantization.method", Stage.ADMISSION, "quantization.method", _set("quantization.method", "int3")
    ),
    Mutation("empty: model.source", Stage.ADMISSION, "model.source", _set("model.source", "")),
    Mutation(
        "bad secret name",
        Stage.ADMISSION,
        "model.credentialsSecret.name",
        _set("model.credentialsSecret", {"name": "Not_A_Name", "key": "token"}),
    ),
    Mutation(
        "bad quantity",
        Stage.ADMISSION,
        "ray.headResources.cpu",
        _bad_quantity,
    ),
    Mutation("bad ray version", Stage.ADMISSION, "ray.rayVersion", _set("ray.rayVersion", "latest")),
    Mutation("unknown field", Stage.ADMISSION, "model.quantisation", _unknown_field),
    Mutation("rule: minReplicas > maxReplicas", Stage.ADMISSION, "autoscaling", _inverted_replicas),
    Mutation("rule: redis without a secret", Stage.ADMISSION, "responseCache", _drop_redis_secret),
    Mutation("rule: tokens below seqs", Stage.ADMISSION, "batching", _tokens_below_seqs),
    Mutation("rule: prefill cannot fit", Stage.ADMISSION, "batching.maxNumBatchedTokens", _prefill_too_small),
    Mutation(
        "quantization the accelerator cannot run", Stage.VALIDATION, "quantization.method", _unrunnable_quantization
    ),
    Mutation("weights do not fit", Stage.VALIDATION, "accelerator", _weights_do_not_fit),
    Mutation("heads not divisible", Stage.VALIDATION, "accelerator.count", _heads_not_divisible),
    Mutation("cpu tensor parallel", Stage.VALIDATION, "accelerator.count", _cpu_tensor_parallel),
    Mutation("bad model source", Stage.VALIDATION, "model.source", _bad_source("model.source")),
    Mutation("bad draft source", Stage.VALIDATION, "model.draft.source", _bad_source("model.draft.source")),
)


@st.composite
def mutated_spec_bodies(draw: st.DrawFn, mutations: tuple[Mutation, ...] = MUTATIONS) -> tuple[Mutation, JSON]:
    """A valid body with exactly one fault from `mutations`."""
    body = draw(valid_spec_bodies())
    mutation = draw(st.sampled_from(mutations))
    mutation.apply(draw, body)
    return mutation, body
