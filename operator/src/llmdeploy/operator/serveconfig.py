"""Spec -> the serving application's arguments and the `serveConfigV2` that carries them.

Pure: the same spec always gives the same bytes. Batching presets, tensor parallelism,
model-source resolution and the Ray Serve admission limits are decided here, once, for both
the cluster (`render`) and the local `serve` command.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import yaml

from llmdeploy.operator.accelerators import ACCELERATORS, AcceleratorType
from llmdeploy.operator.api import BatchingPreset, LLMDeploymentSpec, ResponseCacheBackend
from llmdeploy.serving import config as sc

# Where `pvc://claim/path` sources are mounted in worker pods.
PVC_MOUNT_ROOT: Final = "/mnt/models"
CPU_KV_CACHE_MIB: Final = 1024


@dataclass(frozen=True)
class PresetValues:
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool


# Latency keeps steps short (small batches, short prefill chunks) so inter-token latency stays
# low; throughput packs the GPU. Values follow vLLM's own defaults for H100-class GPUs
# (256 seqs, 8192 tokens) as the throughput end.
PRESETS: Final[dict[BatchingPreset, PresetValues]] = {
    BatchingPreset.LATENCY: PresetValues(32, 2048, True),
    BatchingPreset.BALANCED: PresetValues(128, 4096, True),
    BatchingPreset.THROUGHPUT: PresetValues(256, 8192, True),
}


# vLLM 0.29's default KV block sizes (tokens): the router hashes prompts in the same blocks.
ENGINE_BLOCK_SIZE_GPU: Final = 16
ENGINE_BLOCK_SIZE_CPU: Final = 128


def pvc_parts(source: str) -> tuple[str, str]:
    """`pvc://claim/sub/path` -> (`claim`, `sub/path`)."""
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path


def engine_model_path(source: str) -> str:
    """What vLLM loads for a model source (PVCs are mounted; everything else passes through)."""
    if source.startswith("pvc://"):
        claim, path = pvc_parts(source)
        return f"{PVC_MOUNT_ROOT}/{claim}/{path}".rstrip("/")
    return source


def model_identity(spec: LLMDeploymentSpec) -> str:
    """A hash of everything that decides the text a request gets back (the cache scope)."""
    decisive = {
        "source": spec.model.source,
        "revision": spec.model.revision,
        "quantization": spec.quantization.method.value,
        "kvCacheDtype": spec.quantization.kv_cache_dtype.value,
        "maxModelLen": spec.model.max_model_len,
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def engine_args(spec: LLMDeploymentSpec, served_model_name: str) -> sc.EngineArgs:
    preset = PRESETS[spec.batching.preset]
    chunked = spec.batching.chunked_prefill if spec.batching.chunked_prefill is not None else preset.chunked_prefill
    max_tokens = spec.batching.max_num_batched_tokens or preset.max_num_batched_tokens
    if not chunked and spec.model.max_model_len is not None:
        # Without chunking a whole prompt is prefilled in one step.
        max_tokens = max(max_tokens, spec.model.max_model_len)
    max_seqs = spec.batching.max_num_seqs or preset.max_num_seqs
    is_cpu = spec.accelerator.type == AcceleratorType.CPU
    kv_mib = spec.accelerator.kv_cache_memory_mib or (CPU_KV_CACHE_MIB if is_cpu else None)
    draft = spec.model.draft
    return sc.EngineArgs(
        model=engine_model_path(spec.model.source),
        served_model_name=served_model_name,
        revision=spec.model.revision,
        max_model_len=spec.model.max_model_len,
        quantization=None if spec.quantization.method.value == "none" else spec.quantization.method.value,
        kv_cache_dtype=spec.quantization.kv_cache_dtype.value,
        max_num_seqs=max_seqs,
        max_num_batched_tokens=max(max_tokens, max_seqs),
        enable_chunked_prefill=chunked,
        enable_prefix_caching=True,
        tensor_parallel_size=spec.accelerator.count,
        trust_remote_code=spec.model.trust_remote_code,
        speculative=None
        if draft is None
        else sc.SpeculativeArgs(
            model=engine_model_path(draft.source), num_speculative_tokens=draft.num_speculative_tokens
        ),
        # CPU engines run eagerly (no graph capture) and size the KV cache explicitly.
        enforce_eager=is_cpu,
        kv_cache_memory_bytes=None if kv_mib is None else kv_mib * 2**20,
        # vLLM streams object-store weights with the Run:ai model streamer.
        load_format="runai_streamer" if spec.model.source.startswith("s3://") else None,
    )


def deployment_args(spec: LLMDeploymentSpec, max_num_seqs: int) -> sc.DeploymentArgs:
    acc = ACCELERATORS[spec.accelerator.type]
    scaling = spec.autoscaling
    return sc.DeploymentArgs(
        accelerator=sc.Accelerator.GPU if acc.is_gpu else sc.Accelerator.CPU,
        ray_accelerator_type=acc.ray_accelerator_type,
        num_replicas=spec.replicas,
        autoscaling=scaling.enabled,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_queue_depth=scaling.target_queue_depth,
        upscale_delay_s=scaling.scale_up_delay_seconds,
        downscale_delay_s=scaling.scale_down_delay_seconds,
        scale_to_zero_idle_s=scaling.scale_to_zero.idle_seconds if scaling.scale_to_zero.enabled else None,
        cold_start_s=scaling.cold_start_seconds,
        spare_replicas=scaling.spare_replicas,
        # Twice the batch keeps the next batch waiting inside the engine, where vLLM schedules
        # it; beyond that requests queue at the router, where routing can still choose.
        max_ongoing_requests=spec.serving.max_ongoing_requests or 2 * max_num_seqs,
        max_queued_requests=spec.serving.max_queued_requests,
    )


def serving_args(spec: LLMDeploymentSpec, *, name: str, served_model_name: str) -> sc.ServingArgs:
    engine = engine_args(spec, served_model_name)
    cache = spec.response_cache
    return sc.ServingArgs(
        name=name,
        model_identity=model_identity(spec),
        engine=engine,
        deployment=deployment_args(spec, engine.max_num_seqs),
        router=sc.RouterArgs(
            prefix_aware=spec.routing.prefix_aware,
            max_load_ratio=spec.routing.max_load_ratio,
            index_max_blocks=spec.routing.index_max_blocks,
            block_size=ENGINE_BLOCK_SIZE_CPU if spec.accelerator.type == AcceleratorType.CPU else ENGINE_BLOCK_SIZE_GPU,
        ),
        response_cache=sc.ResponseCacheArgs(
            enabled=cache.enabled,
            ttl_s=cache.ttl_seconds,
            max_entries=cache.max_entries,
            backend=sc.ResponseCacheBackend(cache.backend.value),
            redis_url_env=sc.REDIS_URL_ENV if cache.backend == ResponseCacheBackend.REDIS else None,
            cache_nondeterministic=cache.cache_nondeterministic,
            tenant_header=cache.tenant_header,
        ),
        api_keys_env=sc.API_KEYS_ENV if spec.auth.api_keys_secret is not None else None,
    )


def serve_config(args: sc.ServingArgs) -> dict[str, Any]:
    """The Ray Serve config (`ServeDeploySchema` shape) of one application."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": sc.SERVE_PORT},
        "applications": [
            {
                "name": sc.APPLICATION_NAME,
                "route_prefix": sc.ROUTE_PREFIX,
                "import_path": sc.IMPORT_PATH,
                "args": args.model_dump(mode="json"),
            }
        ],
    }


def serve_config_v2(args: sc.ServingArgs) -> str:
    """`serveConfigV2` is a YAML string inside the RayService spec."""
    return yaml.safe_dump(serve_config(args), sort_keys=True, width=100)
