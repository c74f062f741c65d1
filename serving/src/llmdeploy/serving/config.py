"""The arguments of the serving application: the contract between render and the Ray app.

The operator renders a `ServingArgs` into `serveConfigV2.applications[].args`; Ray Serve hands
that dict to `llmdeploy.serving.app:build_app`, which validates it with the same model. Pure
pydantic: the operator imports this module, so no Ray or vLLM here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMPORT_PATH: Final = "llmdeploy.serving.app:build_app"
APPLICATION_NAME: Final = "llm"
ROUTE_PREFIX: Final = "/"
SERVE_PORT: Final = 8000
# Ray Serve LLM names the engine deployment `LLMServer:<LLMDeployment name>`.
ENGINE_DEPLOYMENT_PREFIX: Final = "LLMServer:"
# Environment variables through which Secrets reach the serving processes (never the values).
HF_TOKEN_ENV: Final = "HF_TOKEN"
REDIS_URL_ENV: Final = "LLMDEPLOY_REDIS_URL"
API_KEYS_ENV: Final = "LLMDEPLOY_API_KEYS"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpeculativeArgs(_Args):
    model: str = Field(description="Draft model path or hub id.")
    num_speculative_tokens: int = Field(ge=1, description="Tokens proposed per step.")


class EngineArgs(_Args):
    """vLLM engine arguments, named as vLLM names them."""

    model: str = Field(description="Hub id or local path that vLLM loads.")
    served_model_name: str = Field(description="Name clients use in the `model` field.")
    revision: str | None = Field(default=None, description="Hub revision.")
    max_model_len: int | None = Field(default=None, description="Context length in tokens.")
    quantization: str | None = Field(default=None, description="vLLM quantization method, None for none.")
    kv_cache_dtype: str = Field(default="auto", description="KV-cache dtype.")
    max_num_seqs: int = Field(ge=1, description="Sequences per engine step.")
    max_num_batched_tokens: int = Field(ge=1, description="Tokens per engine step.")
    enable_chunked_prefill: bool = Field(description="Chunk long prefills.")
    enable_prefix_caching: bool = Field(default=True, description="vLLM automatic prefix caching.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per replica.")
    trust_remote_code: bool = Field(default=False, description="Run the model repo's code.")
    speculative: SpeculativeArgs | None = Field(default=None, description="Draft-model speculation.")
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs / compilation.")
    load_format: str | None = Field(
        default=None, description="vLLM weight loader; `runai_streamer` streams s3:// weights."
    )
    kv_cache_memory_bytes: int | None = Field(
        default=None, ge=1, description="KV-cache size in bytes (CPU engines size it explicitly)."
    )


class Accelerator(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class DeploymentArgs(_Args):
    """Ray Serve deployment settings of the engine replicas."""

    accelerator: Accelerator = Field(description="Whether replicas need GPUs.")
    ray_accelerator_type: str | None = Field(default=None, description="Ray accelerator_type to pin to.")
    num_replicas: int = Field(ge=0, description="Fixed replica count when autoscaling is off.")
    autoscaling: bool = Field(description="Whether the queue-depth policy drives replicas.")
    min_replicas: int = Field(ge=0, description="Floor while there is traffic.")
    max_replicas: int = Field(ge=1, description="Ceiling: the GPU budget.")
    target_queue_depth: float = Field(gt=0, description="Waiting requests per replica to aim for.")
    upscale_delay_s: float = Field(ge=0, description="Delay before adding replicas.")
    downscale_delay_s: float = Field(ge=0, description="Delay before removing replicas.")
    scale_to_zero_idle_s: float | None = Field(default=None, description="Idle time before zero, None: never.")
    cold_start_s: float | None = Field(
        default=None, gt=0, description="Seconds for a new replica to serve; None: the accelerator's default."
    )
    spare_replicas: int = Field(default=0, ge=0, description="Replicas kept beyond what the load needs.")
    max_ongoing_requests: int = Field(ge=1, description="Requests in flight per replica.")
    max_queued_requests: int = Field(ge=0, description="Requests queued per deployment before 503.")


class ScalingConfig(_Args):
    """Parameters of the queue-depth autoscaling policy (`llmdeploy.serving.autoscaling`).

    `build_app` derives it from `DeploymentArgs` and `EngineArgs` and hands it to Ray Serve as
    the policy's `policy_kwargs` (JSON), so the controller validates the same model.
    """

    target_queue_depth: float = Field(gt=0, description="Waiting requests per replica to aim for.")
    max_num_seqs: int = Field(ge=1, description="Sequences a replica's engine runs at once (its running capacity).")
    min_replicas: int = Field(ge=0, description="Floor while there is traffic.")
    max_replicas: int = Field(ge=1, description="Ceiling: the GPU budget.")
    upscale_delay_s: float = Field(
        ge=0, description="Seconds the signal must keep asking for more replicas before they are added."
    )
    downscale_delay_s: float = Field(
        ge=0, description="Seconds the signal must keep allowing fewer replicas before they are removed."
    )
    scale_to_zero_idle_s: float | None = Field(
        default=None, ge=0, description="Seconds without any request before releasing every replica; None: never."
    )
    cold_start_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Seconds from asking for a replica to its first request (pod, model load, engine start). "
            "The policy projects load growth over this horizon, and does not add a replica for a "
            "backlog that the running ones drain sooner. Default 120 (GPU); 25-60 s measured on the CPU here."
        ),
    )
    spare_replicas: int = Field(
        default=0,
        ge=0,
        description=(
            "Replicas kept beyond what the load asks for (N+k) while any replica runs, so a surge "
            "faster than a cold start lands on capacity that is already there."
        ),
    )
    kv_cache_high_watermark: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description=(
            "KV-cache usage (0-1) above which, with requests waiting in the engine, a replica's "
            "running capacity is what its cache holds rather than max_num_seqs."
        ),
    )
    upscale_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description=(
            "Once a saturated replica's throughput has been measured, add replicas when the "
            "arrivals projected one cold start ahead would load them above this fraction of it."
        ),
    )
    downscale_utilization: float = Field(
        default=0.7,
        gt=0,
        lt=1,
        description=(
            "Remove replicas only while the remaining ones would be loaded at most this fraction of "
            "their target (queue-depth slots and measured throughput): the hysteresis band."
        ),
    )
    growth_window_s: float = Field(
        default=15.0, gt=0, description="Seconds between the samples the load growth rate is estimated from."
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.downscale_utilization >= self.upscale_utilization:
            raise ValueError("downscale_utilization must be below upscale_utilization (the hysteresis band)")
        return self


class RouterArgs(_Args):
    prefix_aware: bool = Field(description="Prefix-cache-aware routing on.")
    max_load_ratio: float = Field(ge=1.0, description="Load bound of affinity.")
    index_max_blocks: int = Field(ge=1, description="Router index size limit in blocks.")
    block_size: int = Field(default=16, ge=1, description="Engine KV block size in tokens.")


class ResponseCacheBackend(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class ResponseCacheArgs(_Args):
    enabled: bool = Field(description="Response cache on.")
    ttl_s: int = Field(ge=1, description="Entry lifetime.")
    max_entries: int = Field(ge=1, description="Entry limit.")
    backend: ResponseCacheBackend = Field(description="memory or redis.")
    redis_url_env: str | None = Field(default=None, description="Env var that holds the Redis URL.")
    cache_nondeterministic: bool = Field(description="Cache sampled requests too.")
    tenant_header: str = Field(description="Header naming the tenant.")


class ServingArgs(_Args):
    """Everything `build_app` needs, rendered by the operator or by `llmdeploy serve`."""

    name: str = Field(description="The LLMDeployment's name (deployment and metric label).")
    model_identity: str = Field(
        description="Hash of what decides outputs (source, revision, quantization, engine); cache scope."
    )
    engine: EngineArgs
    deployment: DeploymentArgs
    router: RouterArgs
    response_cache: ResponseCacheArgs
    api_keys_env: str | None = Field(
        default=None,
        description="Env var holding the API keys clients must send (comma- or newline-separated); None: no auth.",
    )


def engine_deployment_name(name: str) -> str:
    """The Serve deployment of an LLMDeployment's engines (and the `deployment` label of its metrics)."""
    return f"{ENGINE_DEPLOYMENT_PREFIX}{name}"
