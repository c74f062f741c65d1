"""Spec -> serving arguments: presets, model sources, admission limits, the cache scope."""

from __future__ import annotations

from typing import Any

import pytest

from llmdeploy.operator.api import LLMDeploymentSpec
from llmdeploy.operator.serveconfig import PRESETS, model_identity, serving_args


def _args(**spec: Any):  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {"model": {"source": "org/m-7B"}, "accelerator": {"type": "nvidia-l4"}}
    body.update(spec)
    return serving_args(LLMDeploymentSpec.model_validate(body), name="d", served_model_name="m")


@pytest.mark.parametrize("preset", ["latency", "balanced", "throughput"])
def test_preset_fills_what_the_spec_leaves_empty(preset: str) -> None:
    args = _args(batching={"preset": preset})
    values = PRESETS[preset]  # type: ignore[index]
    assert (args.engine.max_num_seqs, args.engine.max_num_batched_tokens, args.engine.enable_chunked_prefill) == (
        values.max_num_seqs,
        values.max_num_batched_tokens,
        values.chunked_prefill,
    )


def test_explicit_batching_wins_over_the_preset() -> None:
    args = _args(batching={"preset": "throughput", "maxNumSeqs": 7, "maxNumBatchedTokens": 999})
    assert (args.engine.max_num_seqs, args.engine.max_num_batched_tokens) == (7, 999)


def test_without_chunked_prefill_a_whole_prompt_fits_one_step() -> None:
    args = _args(model={"source": "org/m", "maxModelLen": 16384}, batching={"chunkedPrefill": False})
    assert args.engine.max_num_batched_tokens == 16384


def test_sources_map_to_what_vllm_loads() -> None:
    assert _args(model={"source": "pvc://weights/llama/8b"}).engine.model == "/mnt/models/weights/llama/8b"
    s3 = _args(model={"source": "s3://bucket/llama"}).engine
    assert (s3.model, s3.load_format) == ("s3://bucket/llama", "runai_streamer")
    hub = _args(model={"source": "org/m", "revision": "abc"}).engine
    assert (hub.model, hub.revision, hub.load_format) == ("org/m", "abc", None)


def test_tensor_parallelism_and_draft_model() -> None:
    args = _args(
        accelerator={"type": "nvidia-h100-80gb", "count": 4},
        model={"source": "org/m", "draft": {"source": "pvc://w/draft", "numSpeculativeTokens": 3}},
    )
    assert args.engine.tensor_parallel_size == 4
    assert args.engine.speculative is not None
    assert (args.engine.speculative.model, args.engine.speculative.num_speculative_tokens) == ("/mnt/models/w/draft", 3)


def test_admission_limits_are_explicit_never_rays_1e9_defaults() -> None:
    args = _args(batching={"maxNumSeqs": 64})
    assert args.deployment.max_ongoing_requests == 128
    assert args.deployment.max_queued_requests == 256
    assert _args(serving={"maxOngoingRequests": 5}).deployment.max_ongoing_requests == 5


def test_cpu_engines_run_eagerly_with_a_sized_kv_cache() -> None:
    engine = _args(accelerator={"type": "cpu"}).engine
    assert engine.enforce_eager is True
    assert engine.kv_cache_memory_bytes == 1024 * 2**20
    assert _args().engine.kv_cache_memory_bytes is None  # GPUs: vLLM sizes it from free memory


def test_model_identity_changes_with_what_decides_outputs_only() -> None:
    def identity(**spec: Any) -> str:
        body: dict[str, Any] = {"model": {"source": "org/m"}, "accelerator": {"type": "nvidia-h100-80gb"}}
        body.update(spec)
        return model_identity(LLMDeploymentSpec.model_validate(body))

    base = identity()
    assert identity(batching={"preset": "latency"}) == base
    assert identity(replicas=3) == base
    assert identity(quantization={"method": "fp8"}) != base
    assert identity(model={"source": "org/m", "revision": "v2"}) != base
