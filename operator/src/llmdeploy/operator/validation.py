"""Validation beyond the schema: can this spec run on this accelerator with the pinned vLLM?

One function, `check_spec`, shared by the operator (a `Degraded` condition and an Event),
`llmdeploy render` and `llmdeploy serve` (one line per problem, non-zero exit). It checks
each quantization method and KV-cache dtype against the accelerator's compute capability
(vLLM's own minimums, see `quantization`), whether weights and KV cache fit in accelerator
memory, that tensor parallelism divides the attention heads, and the form of model sources.
`parse_spec` turns pydantic errors into the same one-line, field-named form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from llmdeploy.operator import quantization as q
from llmdeploy.operator.accelerators import ACCELERATORS, AcceleratorType
from llmdeploy.operator.api import LLMDeploymentSpec, parameters_billions
from llmdeploy.operator.errors import SpecError

# vLLM reserves this share of GPU memory by default (`gpu_memory_utilization`).
GPU_MEMORY_UTILIZATION: Final = 0.9
# One replica spans at most one node's accelerators.
MAX_TENSOR_PARALLEL: Final = 8
# Below this share of usable memory left for the KV cache, serving is starved: warn.
MIN_KV_SHARE: Final = 0.1

_SOURCE_FORMS: Final = (
    ("s3://", re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")),
    ("pvc://", re.compile(r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/].*)?$")),
    ("builtin://", re.compile(r"^builtin://(tiny|gpu-regime)$")),
    ("/", re.compile(r"^/.+")),
)
_HUB_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Finding:
    """One problem or note about a spec, tied to the field a user would change."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"spec.{self.field}: {self.message}"


@dataclass(frozen=True)
class Report:
    """The outcome of `check_spec`: errors block serving; notes are shown in status."""

    errors: tuple[Finding, ...] = ()
    notes: tuple[Finding, ...] = ()
    quantization_mode: str = "none"

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Collector:
    errors: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(Finding(where, message))

    def note(self, where: str, message: str) -> None:
        self.notes.append(Finding(where, message))


def _cc_text(cc: int) -> str:
    return f"{cc // 10}.{cc % 10}"


def _methods_that_run(cc: int) -> list[str]:
    common = ("fp8", "awq_marlin", "gptq_marlin", "compressed-tensors", "modelopt_fp4")
    return [m for m in common if q.MIN_CAPABILITY[m] <= cc]


def _gpus_for(cc_needed: int) -> list[str]:
    return [
        a.type.value
        for a in ACCELERATORS.values()
        if a.compute_capability is not None and a.compute_capability >= cc_needed
    ][:3]


def _check_quantization(spec: LLMDeploymentSpec, out: _Collector) -> str:
    method = spec.quantization.method.value
    acc = ACCELERATORS[spec.accelerator.type]
    if method == "none":
        mode = "none (checkpoint precision)"
    elif acc.compute_capability is None:
        if method not in q.CPU_METHODS:
            out.error(
                "quantization.method",
                f"{method} cannot run on accelerator.type cpu: vLLM's CPU backend runs only "
                f"{', '.join(sorted(q.CPU_METHODS))} (or none); choose one of those or a GPU accelerator",
            )
        mode = f"{method} on CPU"
    else:
        cc = acc.compute_capability
        needed = q.MIN_CAPABILITY[method]
        if cc < needed:
            alternatives = _methods_that_run(cc)
            out.error(
                "quantization.method",
                f"{method} needs compute capability >= {_cc_text(needed)} in vLLM "
                f"{q.PINNED_VLLM_VERSION}, but {acc.type.value} has {_cc_text(cc)}; use "
                + (f"one of {', '.join(alternatives)} or none" if alternatives else "none")
                + f", or an accelerator such as {', '.join(_gpus_for(needed))}",
            )
            mode = "unsupported"
        elif method in q.FP8_METHODS and cc < q.FP8_W8A8_MIN_CAPABILITY:
            mode = "W8A16 (weight-only FP8 through Marlin)"
            out.note(
                "quantization.method",
                f"{method} runs weight-only (W8A16, FP8 Marlin) on {acc.type.value} (compute "
                f"capability {_cc_text(cc)} < {_cc_text(q.FP8_W8A8_MIN_CAPABILITY)}): weights take "
                "half the memory, but matrix multiplies run in 16 bit, so expect no FP8 compute speed-up",
            )
        elif method in q.FP8_METHODS:
            mode = "W8A8 (FP8 weights and activations)"
        else:
            mode = method
    kv = spec.quantization.kv_cache_dtype
    cc_kv = acc.compute_capability
    if cc_kv is not None and kv == q.KVCacheDtype.BFLOAT16 and cc_kv < q.BFLOAT16_MIN_CAPABILITY:
        out.error(
            "quantization.kvCacheDtype",
            f"bfloat16 needs compute capability >= 8.0 (vLLM refuses it on {acc.type.value}, "
            f"{_cc_text(cc_kv)}); use float16 or auto",
        )
    if cc_kv is not None and kv in q.FP8_KV_CACHE_DTYPES and cc_kv < q.FP8_KV_CACHE_MIN_CAPABILITY:
        out.note(
            "quantization.kvCacheDtype",
            f"{kv.value} KV cache on {acc.type.value} (compute capability {_cc_text(cc_kv)}) halves "
            "KV memory but attention runs in 16 bit after dequantization",
        )
    return mode


def _check_memory(spec: LLMDeploymentSpec, out: _Collector) -> None:
    acc = ACCELERATORS[spec.accelerator.type]
    size_b = parameters_billions(spec.model)
    if acc.memory_gib is None or size_b is None:
        return
    method = spec.quantization.method.value
    bytes_per_param = q.WEIGHT_BYTES_PER_PARAM.get(method, 2.0)
    weights_gib = size_b * 1e9 * bytes_per_param / 2**30
    usable_gib = acc.memory_gib * GPU_MEMORY_UTILIZATION * spec.accelerator.count
    if weights_gib >= usable_gib:
        needed = int(weights_gib / (acc.memory_gib * GPU_MEMORY_UTILIZATION)) + 1
        more = f"accelerator.count >= {needed}, " if needed <= MAX_TENSOR_PARALLEL else ""
        out.error(
            "accelerator",
            f"about {weights_gib:.0f} GiB of weights ({size_b:g}B parameters, {method}) do not fit in "
            f"{usable_gib:.0f} GiB usable on {spec.accelerator.count} x {acc.type.value}; use "
            f"{more}a larger accelerator, or a 4-bit/8-bit quantization",
        )
    elif usable_gib - weights_gib < MIN_KV_SHARE * usable_gib:
        out.note(
            "accelerator",
            f"weights take about {weights_gib:.0f} of {usable_gib:.0f} GiB usable: little is left for "
            "the KV cache, so few sequences run at once; consider more accelerators or quantization",
        )


def _check_parallelism(spec: LLMDeploymentSpec, out: _Collector) -> None:
    heads = spec.model.attention_heads
    tp = spec.accelerator.count
    if heads is not None and heads % tp:
        divisors = [d for d in range(1, 9) if heads % d == 0]
        out.error(
            "accelerator.count",
            f"tensor parallelism {tp} does not divide the model's {heads} attention heads; use one "
            f"of {', '.join(map(str, divisors))}",
        )
    if spec.accelerator.type == AcceleratorType.CPU and tp > 1:
        out.error("accelerator.count", "cpu replicas run one engine process; set accelerator.count: 1")


def _check_source(source: str, where: str, out: _Collector) -> None:
    for prefix, pattern in _SOURCE_FORMS:
        if source.startswith(prefix):
            if not pattern.match(source):
                out.error(where, f"{source!r} is not a valid {prefix} source ({_SOURCE_HELP})")
            return
    if "://" in source:
        out.error(where, f"{source!r} uses an unsupported scheme ({_SOURCE_HELP})")
    elif not _HUB_ID.match(source):
        out.error(where, f"{source!r} is not a hub id ({_SOURCE_HELP})")


_SOURCE_HELP: Final = (
    "use a hub id like org/name, s3://bucket/path, pvc://claim/path, an absolute path, or builtin://tiny"
)


def check_spec(spec: LLMDeploymentSpec) -> Report:
    """Every semantic problem of `spec`, and notes on how it will run."""
    out = _Collector()
    _check_source(spec.model.source, "model.source", out)
    if spec.model.draft is not None:
        _check_source(spec.model.draft.source, "model.draft.source", out)
    mode = _check_quantization(spec, out)
    _check_memory(spec, out)
    _check_parallelism(spec, out)
    return Report(errors=tuple(out.errors), notes=tuple(out.notes), quantization_mode=mode)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif not item.startswith("function-") and item not in {"str", "int"}:
            parts.append(item)
    return ".".join(parts)


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """One line per pydantic error, named by the manifest's own (camelCase) path."""
    lines = []
    for err in exc.errors(include_url=False):
        where = _loc(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; `kubectl explain llmdeployment.spec` lists fields)"
        lines.append(f"{prefix}.{where}: {message}" if where else f"{prefix}: {message}")
    return lines


def _jsonable(value: Any) -> Any:
    """What kubectl sends for YAML values JSON lacks (an unquoted date is a string there)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return list(value)
    return str(value)


def parse_spec(raw: Mapping[str, Any]) -> tuple[LLMDeploymentSpec, Report]:
    """Parse and check a spec; raise `SpecError` listing every problem, one line each."""
    try:
        # Strict JSON mode, as the API server types the object: "3" or true is not an integer
        # there, so `render` and `serve` must not accept it either (lax mode would).
        text = json.dumps(raw, default=_jsonable)
        spec = LLMDeploymentSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from exc
    report = check_spec(spec)
    if not report.ok:
        raise SpecError([str(f) for f in report.errors])
    return spec, report
