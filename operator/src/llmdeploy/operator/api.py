"""The `LLMDeployment` API (group `llmdeploy.io`, version `v1alpha1`) as pydantic models.

This module is the single source of truth for the resource: the CRD in `crds/` and in the
chart is generated from it (`llmdeploy crd`), the operator, `render` and `serve` parse specs
with it, and `Field(description=...)` is what `kubectl explain` shows. Cross-field rules are
declared once, in `RULES`, and reach both the CRD (as CEL) and these models (as validators).
No Kubernetes or Ray imports here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from llmdeploy.operator.accelerators import AcceleratorType
from llmdeploy.operator.quantization import KVCacheDtype, QuantizationMethod

GROUP: Final = "llmdeploy.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LLMDeployment"
PLURAL: Final = "llmdeployments"
SINGULAR: Final = "llmdeployment"
SHORT_NAMES: Final = ("llmd",)
CATEGORIES: Final = ("llmdeploy", "ai")

DEFAULT_RAY_VERSION: Final = "2.60.0"
DEFAULT_SERVING_IMAGE: Final = "ghcr.io/llmdeploy/llmdeploy-serving:0.1.0"

# A non-negative Kubernetes quantity such as "500m", "4", "16Gi": the apiserver's own pattern
# (as in KubeRay's CRD) without the sign, so nothing admitted here is refused in the RayService.
QUANTITY_PATTERN: Final = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
# DNS-1123 subdomain, the rule for Secret names.
SECRET_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class _Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        use_enum_values=False,
    )


class _RuledModel(_Model):
    """A model whose cross-field rules are the entries of `RULES` at `rules_path`."""

    rules_path: ClassVar[str]

    @model_validator(mode="after")
    def _apply_rules(self) -> Self:
        for rule in RULES:
            if rule.path == self.rules_path and not rule.holds(self):
                raise ValueError(rule.message)
        return self


class SecretKeyRef(_Model):
    """A key of a Secret in the LLMDeployment's namespace. Secrets are referenced, never inlined."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=SECRET_NAME_PATTERN,
        description="Name of the Secret, in the same namespace as the LLMDeployment.",
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret whose value is used.",
    )


class DraftModelSpec(_Model):
    """A smaller draft model for speculative decoding (usually a distilled sibling)."""

    source: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "Where the draft model's weights come from, in the same forms as model.source. "
            "It must share the target model's tokenizer."
        ),
    )
    num_speculative_tokens: int = Field(
        default=4,
        ge=1,
        le=16,
        description=(
            "Tokens the draft proposes per step. More raises the speed-up when the draft is "
            "often right and wastes compute when it is not. Default 4."
        ),
    )


class ModelSpec(_Model):
    """The model to serve and where its weights come from."""

    source: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "Where the weights come from: a model hub id (`org/name`), `s3://bucket/path`, "
            "`pvc://claim/path` (a PersistentVolumeClaim mounted read-only into the workers), "
            "or an absolute local path inside the serving image. Sparse or pruned checkpoints "
            "in compressed-tensors format are served like any other."
        ),
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description=("Model name clients put in the OpenAI `model` field. Default: the LLMDeployment's name."),
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Hub revision (branch, tag or commit) to load. Default: the hub's default.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_485_760,
        description=(
            "Longest prompt plus completion in tokens. Default: the model's own context length. "
            "Lower it to fit more sequences into the KV cache."
        ),
    )
    credentials_secret: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding a model hub token (for gated models). It reaches the engine as "
            "the HF_TOKEN environment variable from a secretKeyRef; the token never appears in "
            "the rendered objects."
        ),
    )
    parameters_billions: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description=(
            "Model size in billions of parameters, for the memory-fit check. Default: read from "
            "the source name where it says (for example `Llama-3.1-8B-Instruct` is 8)."
        ),
    )
    attention_heads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=("Number of attention heads, when known: tensor parallelism (accelerator.count) must divide it."),
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run. Only for trusted sources.",
    )
    draft: DraftModelSpec | None = Field(
        default=None,
        description=(
            "Speculative decoding with a smaller draft model. Trades extra compute for lower "
            "latency at low load; the accuracy of the output is unchanged."
        ),
    )


class QuantizationSpec(_Model):
    """How weights and KV cache are stored: the accuracy/efficiency trade-off."""

    method: QuantizationMethod = Field(
        default=QuantizationMethod.NONE,
        description=(
            "vLLM quantization method. `none` serves the checkpoint's own precision. Pre-"
            "quantized checkpoints (AWQ, GPTQ, compressed-tensors) need the matching method; "
            "`fp8` quantizes a bf16 checkpoint online (full W8A8 on compute capability 8.9+, "
            "weight-only W8A16 on 7.5 to 8.6). Each method is checked against the "
            "accelerator's compute capability."
        ),
    )
    kv_cache_dtype: KVCacheDtype = Field(
        default=KVCacheDtype.AUTO,
        description=(
            "Storage type of the KV cache. `fp8` roughly doubles the sequences that fit at a "
            "small accuracy cost (below compute capability 8.9 it saves memory, not compute). "
            "`bfloat16` needs 8.0+. `auto` follows the model dtype."
        ),
    )


class BatchingPreset(StrEnum):
    LATENCY = "latency"
    BALANCED = "balanced"
    THROUGHPUT = "throughput"


class BatchingSpec(_RuledModel):
    """The engine's continuous-batching policy."""

    rules_path: ClassVar[str] = "batching"

    preset: BatchingPreset = Field(
        default=BatchingPreset.BALANCED,
        description=(
            "Fills the fields left empty: `latency` (small batches, short prefill chunks: low "
            "TTFT and inter-token latency), `balanced`, `throughput` (large batches: most "
            "tokens per GPU-second)."
        ),
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Most sequences decoded together per step. Default: from the preset.",
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=16,
        le=1_048_576,
        description="Most tokens (prefill and decode) processed per step. Default: from the preset.",
    )
    chunked_prefill: bool | None = Field(
        default=None,
        description=(
            "Split long prompts into chunks interleaved with decode steps, so one long prompt "
            "does not stall every stream. Default: from the preset."
        ),
    )


class ScaleToZeroSpec(_Model):
    """Releasing every replica (and its GPUs) when the deployment is idle."""

    enabled: bool = Field(
        default=False,
        description=(
            "Scale to zero replicas after idleSeconds without requests. The first request after "
            "that waits for a replica to start (a cold start of minutes on GPUs)."
        ),
    )
    idle_seconds: int = Field(
        default=900,
        ge=30,
        le=604_800,
        description="Seconds without any request before scaling to zero. Default 900.",
    )


class AutoscalingSpec(_RuledModel):
    """Replicas that follow queue depth, within a GPU budget."""

    rules_path: ClassVar[str] = "autoscaling"

    enabled: bool = Field(
        default=False,
        description=(
            "Let the in-cluster policy move replicas between minReplicas and maxReplicas on queue "
            "depth. When false, spec.replicas is the replica count (HPA, KEDA or `kubectl "
            "scale` may drive it through the /scale subresource)."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas while the deployment has traffic. Default 1.",
    )
    max_replicas: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Most replicas: the GPU budget is maxReplicas x accelerator.count. Default 4.",
    )
    target_queue_depth: float = Field(
        default=4.0,
        gt=0,
        le=10_000,
        description=(
            "Requests waiting per replica (queued in the engine or at the router) that the "
            "policy aims for. Lower means lower latency and more GPUs. Default 4."
        ),
    )
    scale_up_delay_seconds: int = Field(
        default=15,
        ge=0,
        le=3600,
        description="How long the signal must ask for more replicas before adding them. Default 15.",
    )
    scale_down_delay_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="How long the signal must ask for fewer replicas before removing them. Default 300.",
    )
    cold_start_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description=(
            "Seconds from asking for a replica to its first answer (pod scheduling, image pull, "
            "weight load, engine start). The policy adds replicas this far ahead of a rising load "
            "and adds none for a backlog the running ones drain sooner. Default: 120 on GPUs, 60 on CPU."
        ),
    )
    spare_replicas: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Replicas kept beyond what the load needs (N+k), for surges faster than a cold start: "
            "every spare replica's GPUs are paid for all the time (within maxReplicas; scale to zero "
            "still releases them). benchmarks/autoscaling.py shows the SLO bought per replica-second. Default 0."
        ),
    )
    scale_to_zero: ScaleToZeroSpec = Field(
        default_factory=ScaleToZeroSpec,
        description="Release every replica when idle.",
    )


class RoutingSpec(_Model):
    """How requests are spread over replicas."""

    prefix_aware: bool = Field(
        default=True,
        description=(
            "Send each request to the replica most likely to hold its prompt prefix in vLLM's "
            "prefix cache, while that replica is not overloaded. When false, requests go to the "
            "less loaded of two random replicas."
        ),
    )
    max_load_ratio: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description=(
            "Prefix affinity is kept only while the preferred replica's expected cost "
            "(uncached prefill plus queue) is at most this multiple of the cheapest replica's. "
            "Lower spreads a hot prompt sooner. Default 1.5."
        ),
    )
    index_max_blocks: int = Field(
        default=1_000_000,
        ge=1024,
        le=100_000_000,
        description=(
            "Hard limit on the prefix blocks the router remembers across replicas; least "
            "recently used blocks are forgotten first. Default 1,000,000."
        ),
    )


class ResponseCacheBackend(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class ResponseCacheSpec(_RuledModel):
    """Exact-match cache of complete responses, shared by every ingress replica."""

    rules_path: ClassVar[str] = "responseCache"

    enabled: bool = Field(default=False, description="Answer repeated identical requests from the cache.")
    ttl_seconds: int = Field(
        default=3600,
        ge=1,
        le=2_592_000,
        description="Seconds an entry is served after it was stored. Default 3600.",
    )
    max_entries: int = Field(
        default=10_000,
        ge=1,
        le=100_000_000,
        description="Most entries kept; least recently used are evicted first. Default 10,000.",
    )
    backend: ResponseCacheBackend = Field(
        default=ResponseCacheBackend.MEMORY,
        description=(
            "`memory`: a cache held in the serving cluster, lost on upgrade. `redis`: an external "
            "Redis that survives upgrades (set redisUrlSecret)."
        ),
    )
    redis_url_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the Redis URL (`redis://user:password@host:6379/0`).",
    )
    cache_nondeterministic: bool = Field(
        default=False,
        description=(
            "Also cache sampled requests (temperature > 0 without a seed). Repeated prompts then "
            "get identical answers instead of fresh samples."
        ),
    )
    tenant_header: str = Field(
        default="x-tenant-id",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9-]+$",
        description=(
            "Request header naming the tenant. Entries are scoped per tenant (and per API key), "
            "so one tenant never receives another's cached text."
        ),
    )


class AuthSpec(_Model):
    """Who may call the OpenAI endpoint."""

    api_keys_secret: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the API keys clients must send as `Authorization: Bearer <key>` "
            "(one per line or comma-separated). Unset: no authentication. Requests without a "
            "valid key get HTTP 401 with an OpenAI error body. Each key is also a cache scope."
        ),
    )


class ResourceList(_Model):
    """CPU and memory for a pod."""

    cpu: Quantity = Field(description="CPU request and limit, as a Kubernetes quantity (e.g. `4`).")
    memory: Quantity = Field(description="Memory request and limit, as a Kubernetes quantity (e.g. `16Gi`).")


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(_Model):
    """A Kubernetes toleration for the GPU worker pods."""

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL, description="`Equal` matches the value; `Exists` any value."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value, for `Equal`.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to tolerate; empty means all.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint."
    )


class RaySpec(_Model):
    """The Ray cluster that runs the replicas."""

    image: str = Field(
        default=DEFAULT_SERVING_IMAGE,
        min_length=1,
        max_length=512,
        description="Container image of head and workers: Ray's LLM image plus this project's serving package.",
    )
    ray_version: str = Field(
        default=DEFAULT_RAY_VERSION,
        pattern=r"^\d+\.\d+\.\d+$",
        description="Ray version inside the image (KubeRay needs it to manage the cluster).",
    )
    head_resources: ResourceList = Field(
        default_factory=lambda: ResourceList(cpu="2", memory="8Gi"),
        description="CPU and memory of the head pod. The head never gets a GPU.",
    )
    worker_resources: ResourceList | None = Field(
        default=None,
        description=(
            "CPU and memory of each worker pod (one pod per replica). Default: 8 CPUs and 32Gi per accelerator."
        ),
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the GPU worker pods must match (for example a GPU product label).",
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations of the GPU worker pods, for tainted GPU node pools.",
    )
    worker_idle_timeout_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Seconds a worker pod with nothing to do lives before Ray's autoscaler removes it. Default 60.",
    )


class ServingSpec(_Model):
    """Admission limits of each replica."""

    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Requests a replica works on at once (sent to its engine). Default: 2 x the batch "
            "size, so the engine always has the next batch waiting."
        ),
    )
    max_queued_requests: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description=(
            "Requests waiting for a replica beyond that; further requests are shed with HTTP "
            "503 and Retry-After instead of timing out. Default 256."
        ),
    )


class AcceleratorSpec(_Model):
    """What each replica runs on."""

    type: AcceleratorType = Field(
        default=AcceleratorType.NVIDIA_H100_80GB,
        description="Accelerator model. Decides which quantization methods can run, and memory.",
    )
    count: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Accelerators per replica; the model is split over them (tensor parallelism).",
    )
    kv_cache_memory_mib: int | None = Field(
        default=None,
        ge=16,
        alias="kvCacheMemoryMiB",
        le=16_777_216,
        description=(
            "KV-cache size per replica in MiB. Default: on GPUs, what is left of 90% of "
            "accelerator memory after the weights; on cpu, 1024."
        ),
    )


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, stated once: CEL for admission, a predicate for everything else."""

    path: str  # the spec sub-object the rule is attached to, "" for the spec itself
    cel: str
    message: str
    holds: Callable[[Any], bool]


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "autoscaling",
        "self.minReplicas <= self.maxReplicas",
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        lambda a: a.min_replicas <= a.max_replicas,
    ),
    Rule(
        "responseCache",
        "self.backend != 'redis' || has(self.redisUrlSecret)",
        "responseCache.backend redis needs responseCache.redisUrlSecret (the Secret key holding the Redis URL)",
        lambda c: c.backend != ResponseCacheBackend.REDIS or c.redis_url_secret is not None,
    ),
    Rule(
        "batching",
        "!has(self.maxNumSeqs) || !has(self.maxNumBatchedTokens) || self.maxNumBatchedTokens >= self.maxNumSeqs",
        "batching.maxNumBatchedTokens must be at least batching.maxNumSeqs (each sequence needs a token per step)",
        lambda b: (
            b.max_num_seqs is None or b.max_num_batched_tokens is None or b.max_num_batched_tokens >= b.max_num_seqs
        ),
    ),
    Rule(
        "",
        "!has(self.model.maxModelLen) || !has(self.batching) || !has(self.batching.maxNumBatchedTokens) "
        "|| !has(self.batching.chunkedPrefill) || self.batching.chunkedPrefill "
        "|| self.batching.maxNumBatchedTokens >= self.model.maxModelLen",
        "without chunked prefill, batching.maxNumBatchedTokens must be at least model.maxModelLen "
        "(a whole prompt is prefilled in one step); raise it or set batching.chunkedPrefill: true",
        lambda s: (
            s.model.max_model_len is None
            or s.batching.max_num_batched_tokens is None
            or s.batching.chunked_prefill is None
            or s.batching.chunked_prefill
            or s.batching.max_num_batched_tokens >= s.model.max_model_len
        ),
    ),
)


class LLMDeploymentSpec(_RuledModel):
    """The desired state of a served LLM."""

    rules_path: ClassVar[str] = ""

    model: ModelSpec = Field(description="The model to serve.")
    quantization: QuantizationSpec = Field(
        default_factory=QuantizationSpec, description="Weight and KV-cache precision."
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Continuous-batching policy of each engine."
    )
    accelerator: AcceleratorSpec = Field(
        default_factory=AcceleratorSpec, description="Accelerator type and count per replica."
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Replica count when autoscaling is disabled (the /scale subresource's target, so "
            "`kubectl scale`, HPA and KEDA can set it). Ignored while autoscaling.enabled."
        ),
    )
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Queue-depth autoscaling.")
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="Prefix-cache-aware routing.")
    response_cache: ResponseCacheSpec = Field(
        default_factory=ResponseCacheSpec, description="Shared cache of complete responses."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Per-replica admission limits.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="API-key authentication of the OpenAI endpoint.")
    ray: RaySpec = Field(default_factory=RaySpec, description="The Ray cluster that runs the replicas.")


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"


class Condition(_Model):
    """One observation of the resource's state, in the Kubernetes condition convention."""

    type: ConditionType = Field(description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason, machine-readable.")
    message: str = Field(default="", max_length=32_768, description="What happened and what to do.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition was computed from."
    )


class ScalingEvent(_Model):
    """One replica-count change decided by the autoscaler."""

    time: datetime = Field(description="When the change was observed.")
    from_replicas: int = Field(ge=0, alias="from", description="Replicas before.")
    to_replicas: int = Field(ge=0, alias="to", description="Replicas after.")
    reason: str = Field(max_length=1024, description="Why the policy decided so.")


class LLMDeploymentStatus(_Model):
    """The observed state, written by the operator."""

    model_config = ConfigDict(frozen=False)

    phase: Phase = Field(default=Phase.PENDING, description="Summary: Pending, Progressing, Ready or Degraded.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing and Degraded.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    replicas: int = Field(default=0, ge=0, description="Serving replicas that exist (ready or not).")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas ready to take requests.")
    desired_replicas: int = Field(default=0, ge=0, description="Replicas the spec or the autoscaler asks for.")
    queue_depth: float | None = Field(
        default=None, ge=0, description="Requests waiting per replica, as last reported by the application."
    )
    scaling_history: list[ScalingEvent] = Field(
        default_factory=list, max_length=20, description="The latest replica-count changes, newest last."
    )
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI-compatible base URL.")
    ray_service_name: str | None = Field(default=None, description="Name of the child RayService.")
    selector: str | None = Field(
        default=None, description="Label selector of the worker pods (for the /scale subresource)."
    )
    quantization_mode: str | None = Field(
        default=None, description="How the chosen quantization runs on this accelerator (e.g. weight-only W8A16)."
    )


class ObjectMeta(_Model):
    """The parts of Kubernetes object metadata the project reads."""

    model_config = ConfigDict(extra="allow", alias_generator=None)

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str = Field(default="default")
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMDeployment(_Model):
    """A whole `LLMDeployment` manifest, as users write it."""

    api_version: Literal["llmdeploy.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LLMDeployment"]
    metadata: ObjectMeta
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus | None = None

    @property
    def served_model_name(self) -> str:
        return self.spec.model.name or self.metadata.name


_PARAMS_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])")


def parameters_billions(model: ModelSpec) -> float | None:
    """The model size in billions: declared, or read from the source name (`...-8B-...`)."""
    if model.parameters_billions is not None:
        return model.parameters_billions
    # MoE names such as 8x7B state total experts; the product is the weight count.
    moe = re.search(r"(\d+)x(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])", model.source)
    if moe:
        return int(moe.group(1)) * float(moe.group(2))
    match = _PARAMS_IN_NAME.search(model.source.rsplit("/", 1)[-1])
    return float(match.group(1)) if match else None
