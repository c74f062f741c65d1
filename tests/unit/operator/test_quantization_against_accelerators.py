"""Each quantization method and KV-cache dtype is checked against the accelerator."""

from __future__ import annotations

from typing import Any

import pytest

from llmdeploy.operator.api import LLMDeploymentSpec
from llmdeploy.operator.validation import check_spec


def _spec(accelerator: str, method: str = "none", kv: str = "auto", **model: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate(
        {
            "model": {"source": "org/some-model", **model},
            "quantization": {"method": method, "kvCacheDtype": kv},
            "accelerator": {"type": accelerator},
        }
    )


@pytest.mark.parametrize(
    ("accelerator", "method", "mode"),
    [
        ("nvidia-h100-80gb", "fp8", "W8A8 (FP8 weights and activations)"),
        ("nvidia-l4", "fp8", "W8A8 (FP8 weights and activations)"),
        ("nvidia-a100-80gb", "fp8", "W8A16 (weight-only FP8 through Marlin)"),
        ("nvidia-t4", "fp8", "W8A16 (weight-only FP8 through Marlin)"),
        ("nvidia-l4", "awq_marlin", "awq_marlin"),
        ("nvidia-v100-32gb", "gptq", "gptq"),
        ("cpu", "fp8_per_channel", "fp8_per_channel on CPU"),
        ("cpu", "none", "none (checkpoint precision)"),
    ],
)
def test_methods_that_run(accelerator: str, method: str, mode: str) -> None:
    report = check_spec(_spec(accelerator, method))
    assert report.ok, report.errors
    assert report.quantization_mode == mode


def test_fp8_below_8_9_says_it_runs_weight_only() -> None:
    report = check_spec(_spec("nvidia-a100-80gb", "fp8"))
    assert any("weight-only" in f.message and f.field == "quantization.method" for f in report.notes)


@pytest.mark.parametrize(
    ("accelerator", "method", "needles"),
    [
        ("nvidia-v100-32gb", "fp8", ["7.5", "7.0", "nvidia-v100-32gb"]),
        ("nvidia-t4", "fbgemm_fp8", ["8.0", "7.5"]),
        ("nvidia-h100-80gb", "fp_quant", ["10.0", "9.0"]),
        ("cpu", "awq", ["cpu", "fp8_per_channel"]),
    ],
)
def test_methods_refused_with_the_reason_and_a_way_out(accelerator: str, method: str, needles: list[str]) -> None:
    report = check_spec(_spec(accelerator, method))
    assert not report.ok
    (finding,) = report.errors
    assert finding.field == "quantization.method"
    for needle in needles:
        assert needle in finding.message
    assert "use" in finding.message or "choose" in finding.message


def test_bfloat16_kv_cache_needs_ampere() -> None:
    assert not check_spec(_spec("nvidia-t4", kv="bfloat16")).ok
    assert check_spec(_spec("nvidia-a100-80gb", kv="bfloat16")).ok


def test_weights_that_do_not_fit_are_refused_with_a_count_that_would() -> None:
    report = check_spec(_spec("nvidia-l4", source="meta-llama/Llama-3.1-70B-Instruct"))
    (finding,) = report.errors
    assert finding.field == "accelerator" and "do not fit" in finding.message
    assert check_spec(_spec("nvidia-h100-80gb", source="meta-llama/Llama-3.1-8B-Instruct")).ok


def test_tensor_parallelism_must_divide_the_heads() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"source": "org/m", "attentionHeads": 40},
            "accelerator": {"type": "nvidia-h100-80gb", "count": 3},
        }
    )
    (finding,) = check_spec(spec).errors
    assert finding.field == "accelerator.count" and "1, 2, 4, 5, 8" in finding.message


@pytest.mark.parametrize(
    "source", ["org/name", "name", "s3://bucket/models/x", "pvc://claim/path/x", "/models/x", "builtin://tiny"]
)
def test_model_source_forms_accepted(source: str) -> None:
    assert check_spec(_spec("nvidia-h100-80gb", source=source)).ok


@pytest.mark.parametrize(
    "source", ["http://example/x", "pvc://Bad_Claim/x", "s3://", "org/name/extra", "builtin://huge"]
)
def test_model_source_forms_refused(source: str) -> None:
    (finding,) = check_spec(_spec("nvidia-h100-80gb", source=source)).errors
    assert finding.field == "model.source"
