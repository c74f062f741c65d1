"""The Ray Serve application builder named in `serveConfigV2.import_path`.

This module owns the translation of `ServingArgs` (the contract the operator renders) into Ray
Serve LLM's public configuration: the `LLMConfig` of the engine deployment (vLLM engine
arguments, the explicit Ray Serve deployment options, the accelerator) and the arguments of
`ray.serve.llm.build_openai_app` (ingress class and ingress deployment options). It also owns
model-source resolution: `builtin://<preset>` names a random-weight model built by
`llmdeploy.serving.tinymodel`, a local path is loaded as it is, anything else is a model-hub id
that vLLM fetches itself (with `HF_TOKEN` from the replica's environment, never from the
arguments).

The mapping (`engine_kwargs`, `deployment_config`, `ingress_deployment_config`,
`llm_config_kwargs`, `openai_app_args`) is pure: no Ray, no vLLM, no I/O, so it is unit-tested
without starting Ray. `resolve_model_source` only reads the model-cache environment variables
and asks whether a bare relative name is a folder. Ray and vLLM are imported only when an
application is built (`build_app`) or a Ray-derived class is first used.

With autoscaling on, the engine deployment is Ray Serve LLM's `LLMServer` subclassed only to
report vLLM's waiting and running requests, KV-cache usage and completion rate to the
queue-depth policy (`llmdeploy.serving.autoscaling`), which `autoscaling_config` names.

The ingress is Ray Serve LLM's `OpenAiIngress`, subclassed so that an unknown model gets an
OpenAI error body (see `OpenAiIngress` below) and, through `llmdeploy.serving.ingress`, to
answer repeated requests from the response cache and to require API keys when configured;
callers may pass another ingress class.
With `router.prefix_aware`, the engine deployment's `request_router_config` names
`llmdeploy.serving.routing.router:PrefixAwareRouter` (prefix-cache affinity within a load
bound); otherwise Ray's default router (power of two choices) spreads requests.

Checks that need the files of a model run where the engine runs, not where the application
is built: in a RayService the builder runs on the head pod, while model volumes are mounted
on the worker pods only. The `EngineNodeSetup` callback (Ray Serve LLM's `callback_config`)
runs on every node of a replica's placement group before vLLM starts: it builds
`builtin://` models there and fails with a one-line error when a local path is missing.
`check_model_sources` gives the same answer before deploying, for local runs.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from llmdeploy.serving import tinymodel
from llmdeploy.serving.autoscaling import (
    FINISHED_RATE_KEY,
    KV_CACHE_USAGE_KEY,
    POLICY_IMPORT_PATH,
    RUNNING_KEY,
    WAITING_KEY,
)
from llmdeploy.serving.config import Accelerator, DeploymentArgs, EngineArgs, ScalingConfig, ServingArgs
from llmdeploy.serving.routing import policy

if TYPE_CHECKING:
    from ray.serve import Application

# The callback Ray Serve LLM instantiates on each engine node (see `__getattr__`).
ENGINE_NODE_SETUP: Final = "llmdeploy.serving.app:EngineNodeSetup"
# The OpenAI ingress (Ray Serve LLM's, with OpenAI-shaped errors for unknown models).
INGRESS_CLS: Final = "llmdeploy.serving.app:OpenAiIngress"
# The engine deployment of autoscaled replicas: Ray Serve LLM's LLMServer that also reports
# vLLM's queue to the autoscaling policy (see `_llm_server_class`).
ENGINE_SERVER_CLS: Final = "llmdeploy.serving.app:LLMServer"
# The prefix-cache-aware request router of the engine deployment (see `request_router_config`).
ROUTER_CLS: Final = "llmdeploy.serving.routing.router:PrefixAwareRouter"
# The router's cost model (`routing.policy.RoutingParams`) by accelerator: seconds per uncached
# prompt token, the least a prefill takes, and what each ongoing request adds to a new one's
# time to first token. GPU: an H100 serving an 8B model (the policy's defaults). CPU: vLLM's
# CPU engine with `builtin://gpu-regime` here (about 2,000 prompt tokens/s and 50 ms steps at
# 8 requests, benchmarks/results/serving_overhead.json), where a prefill weighs far more
# against a queued request than on a GPU; with the GPU's figures a CPU router would trade
# cached prefixes for queue balance it does not need.
ROUTER_COSTS: Final = {
    Accelerator.GPU: {
        "prefill_s_per_token": policy.H100_8B_PREFILL_S_PER_TOKEN,
        "prefill_floor_s": policy.H100_8B_PREFILL_FLOOR_S,
        "queue_s_per_request": policy.H100_8B_QUEUE_S_PER_REQUEST,
    },
    Accelerator.CPU: {"prefill_s_per_token": 1 / 2_000, "prefill_floor_s": 0.020, "queue_s_per_request": 0.050},
}
# Seconds from asking for a replica to its first request, by accelerator, unless the spec sets
# autoscaling.coldStartSeconds: GPU pods pull an image, load weights and capture graphs
# (minutes); the tiny CPU engine on a 2-core machine took 25-60 s in `test_autoscaling_engine`
# (the longer while the other engine was serving).
COLD_START_S: Final = {Accelerator.GPU: 120.0, Accelerator.CPU: 60.0}
# Seconds a shed request (503) is told to wait before retrying (`Retry-After`).
SHED_RETRY_AFTER_S: Final = 1.0
# Ray Serve averages the replicas' and handles' reports over this window (it must exceed Ray's
# 10 s report interval); replicas record a sample every fifth of it.
LOOK_BACK_S: Final = 15.0
# vLLM's CPU backend reads this (GiB) and lets it silently override kv_cache_memory_bytes. A
# runtime_env can only set variables, and no value is neutral ("" fails vLLM's int parsing, "0"
# means 0 bytes), so `EngineNodeSetup` removes it in the replica process before vLLM starts.
CPU_KV_CACHE_SPACE_ENV: Final = "VLLM_CPU_KVCACHE_SPACE"
LOCAL_PATH_PREFIXES: Final = ("/", "./", "../", "~", "file://")

# Ray Serve routes this logger into the replica logs.
_logger = logging.getLogger("ray.serve")


class SourceKind(StrEnum):
    BUILTIN = "builtin"
    LOCAL = "local"
    HUB = "hub"


class ModelSourceError(ValueError):
    """A model source that cannot be served; the message is one line that says what to fix."""


@dataclass(frozen=True)
class ModelSource:
    """Where vLLM loads a model from, after resolving `builtin://` and local paths."""

    kind: SourceKind
    # What vLLM is given: a local folder, or a hub id.
    location: str
    # The source as written in the arguments.
    declared: str
    # The preset name for builtin models.
    preset: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind.value,
            "location": self.location,
            "declared": self.declared,
            "preset": self.preset,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSource:
        return cls(
            kind=SourceKind(data["kind"]),
            location=str(data["location"]),
            declared=str(data["declared"]),
            preset=data.get("preset"),
        )


def resolve_model_source(source: str, *, cache_dir: Path | str | None = None) -> ModelSource:
    """Classify a model source and say what vLLM should load. Builds and checks nothing.

    `builtin://tiny` → the folder `ensure_tiny_model` writes (under `cache_dir`, default the
    model cache of `tinymodel`); a path (absolute, `./`, `../`, `~`, `file://`) → that path,
    absolute; anything else → a hub id, unchanged. A bare relative name that exists as a
    folder here is a local path, as in Hugging Face's own loaders.
    """
    if tinymodel.is_builtin(source):
        try:
            kind = tinymodel.builtin_kind(source)
        except tinymodel.UnknownBuiltinModelError as err:
            raise ModelSourceError(str(err)) from None
        location = tinymodel.model_path(kind, cache_dir)
        return ModelSource(SourceKind.BUILTIN, str(location), source, preset=kind)
    if source.startswith(LOCAL_PATH_PREFIXES) or os.path.isdir(source):
        path = Path(source.removeprefix("file://")).expanduser().absolute()
        return ModelSource(SourceKind.LOCAL, str(path), source)
    if not source.strip():
        raise ModelSourceError("model source is empty; give a hub id, a path or builtin://tiny")
    return ModelSource(SourceKind.HUB, source, source)


def check_model_source(model: ModelSource) -> None:
    """Raise `ModelSourceError` (one line) when a local model folder is not on this node."""
    if model.kind is not SourceKind.LOCAL:
        return
    path = Path(model.location)
    where = f"on node {socket.gethostname()}"
    if not path.exists():
        raise ModelSourceError(f"model path {path} does not exist {where} (source {model.declared!r})")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelSourceError(f"model path {path} has no config.json {where}; point it at a Hugging Face model folder")


def prepare_model_source(model: ModelSource) -> Path | None:
    """Make a model's files present on this node: build a builtin model, check a local path."""
    if model.kind is SourceKind.BUILTIN:
        assert model.preset is not None
        built = tinymodel.ensure_tiny_model(model.preset, Path(model.location).parent)
        if str(built) != model.location:
            raise ModelSourceError(
                f"{model.declared} built at {built}, expected {model.location}; "
                "the model-cache code differs between nodes"
            )
        return built
    check_model_source(model)
    return Path(model.location) if model.kind is SourceKind.LOCAL else None


def engine_kwargs(engine: EngineArgs, *, draft: ModelSource | None = None) -> dict[str, Any]:
    """vLLM engine arguments (everything but `model`/`served_model_name`, which Ray sets).

    Ray Serve LLM adds the executor backend itself (`mp` on CPU, `ray` on GPU).
    """
    kwargs: dict[str, Any] = {
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "enable_chunked_prefill": engine.enable_chunked_prefill,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "enforce_eager": engine.enforce_eager,
        "trust_remote_code": engine.trust_remote_code,
        # Engine metrics (vllm:* → ray_vllm_*) need stats; Ray refuses the combination anyway.
        "disable_log_stats": False,
        # Responses report `usage.prompt_tokens_details.cached_tokens`: the prefix cache at work,
        # per request (an OpenAI frontend option; Ray Serve LLM passes it to vLLM's frontend).
        "enable_prompt_tokens_details": True,
    }
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.quantization is not None:
        kwargs["quantization"] = engine.quantization
    if engine.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    if engine.revision is not None:
        kwargs["revision"] = engine.revision
    if engine.load_format is not None:
        kwargs["load_format"] = engine.load_format
    if engine.speculative is not None:
        kwargs["speculative_config"] = {
            "model": draft.location if draft is not None else engine.speculative.model,
            "num_speculative_tokens": engine.speculative.num_speculative_tokens,
        }
    return kwargs


def scaling_config(deployment: DeploymentArgs, *, max_num_seqs: int) -> ScalingConfig:
    """The queue-depth policy's parameters (its `policy_kwargs`)."""
    return ScalingConfig(
        target_queue_depth=deployment.target_queue_depth,
        max_num_seqs=max_num_seqs,
        min_replicas=min(deployment.min_replicas, deployment.max_replicas),
        max_replicas=deployment.max_replicas,
        upscale_delay_s=deployment.upscale_delay_s,
        downscale_delay_s=deployment.downscale_delay_s,
        scale_to_zero_idle_s=deployment.scale_to_zero_idle_s,
        cold_start_s=(
            COLD_START_S[deployment.accelerator] if deployment.cold_start_s is None else deployment.cold_start_s
        ),
        spare_replicas=deployment.spare_replicas,
    )


def autoscaling_config(deployment: DeploymentArgs, *, max_num_seqs: int) -> dict[str, Any]:
    """Ray Serve autoscaling of the engine replicas: the queue-depth policy, every knob explicit.

    `llmdeploy.serving.autoscaling.QueueDepthPolicy` decides from the engines' waiting and
    running requests and KV-cache usage plus the requests queued at handles, and applies the
    spec's up/down delays and idle time itself. Ray wraps every policy in its own delay logic,
    so Ray's delays are 0 here: with both, each move would wait twice. Ray still clamps the
    decision to `[min_replicas, max_replicas]` and wakes a deployment at zero replicas on the
    first request. `target_ongoing_requests` is unused by the policy; it is set (running batch
    plus the queue target) because Ray Serve LLM's default is 1e9 and Ray exports it as a gauge.
    """
    scaling = scaling_config(deployment, max_num_seqs=max_num_seqs)
    floor = 0 if deployment.scale_to_zero_idle_s is not None else scaling.min_replicas
    return {
        "min_replicas": floor,
        "initial_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": float(max_num_seqs + deployment.target_queue_depth),
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "look_back_period_s": LOOK_BACK_S,
        "policy": {"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": scaling.model_dump(mode="json")},
    }


def max_queued_requests(deployment: DeploymentArgs) -> int:
    """Ray Serve takes -1 (no limit) or a positive bound; the contract's 0 (shed at once) → 1."""
    return max(1, deployment.max_queued_requests)


def deployment_config(args: ServingArgs) -> dict[str, Any]:
    """Ray Serve options of the engine deployment (`LLMConfig.deployment_config`)."""
    deployment = args.deployment
    config: dict[str, Any] = {
        "name": args.name,
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_queued_requests": max_queued_requests(deployment),
    }
    if deployment.autoscaling:
        config["autoscaling_config"] = autoscaling_config(deployment, max_num_seqs=args.engine.max_num_seqs)
    else:
        config["num_replicas"] = deployment.num_replicas
    return config


def ingress_deployment_config(args: ServingArgs) -> dict[str, Any]:
    """Ray Serve options of the OpenAI ingress, explicit instead of Ray Serve LLM's 1e9s.

    An ingress replica admits every request the engines can hold plus the deployment's
    queue. Beyond that, requests wait at Ray Serve's proxy, which must shed them too: without
    a bound there, a burst waits in the proxy's unbounded queue and times out instead of
    getting a quick 503 (test_serving_bad_requests' burst). So the proxy's queue for the
    ingress has the same `max_queued_requests`, and its 503 carries `Retry-After`. It scales
    with the engines: one ingress replica per engine replica's worth of ongoing requests,
    zero only when the engines may scale to zero.
    """
    deployment = args.deployment
    most = deployment.max_replicas if deployment.autoscaling else deployment.num_replicas
    most = max(1, most)
    capacity = most * deployment.max_ongoing_requests + max_queued_requests(deployment)
    floor = 0 if deployment.autoscaling and deployment.scale_to_zero_idle_s is not None else 1
    autoscaling: dict[str, Any] = {
        "min_replicas": floor,
        "initial_replicas": 1,
        "max_replicas": most,
        "target_ongoing_requests": float(deployment.max_ongoing_requests),
        "upscale_delay_s": deployment.upscale_delay_s,
        "downscale_delay_s": deployment.downscale_delay_s,
    }
    if floor == 0:
        autoscaling["downscale_to_zero_delay_s"] = deployment.scale_to_zero_idle_s
    return {
        "max_ongoing_requests": capacity,
        "max_queued_requests": max_queued_requests(deployment),
        "backpressure_config": {"retry_after_s": SHED_RETRY_AFTER_S},
        "autoscaling_config": autoscaling,
    }


def llm_config_kwargs(
    args: ServingArgs,
    *,
    model: ModelSource,
    draft: ModelSource | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `ray.serve.llm.LLMConfig` for `args`. Pure."""
    accelerator = args.deployment.accelerator
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": args.engine.served_model_name, "model_source": model.location},
        "engine_kwargs": engine_kwargs(args.engine, draft=draft),
        "accelerator_config": {"kind": accelerator.value},
        "deployment_config": deployment_config(args),
        "log_engine_metrics": True,
        "callback_config": {
            "callback_class": ENGINE_NODE_SETUP,
            "callback_kwargs": {
                "sources": [m.to_json() for m in (model, draft) if m is not None],
                "unset_env": unset_env(args),
            },
            "raise_error_on_callback": True,
        },
    }
    if args.router.prefix_aware:
        kwargs["deployment_config"]["request_router_config"] = request_router_config(args, model=model)
    if accelerator is Accelerator.GPU and args.deployment.ray_accelerator_type is not None:
        kwargs["accelerator_type"] = args.deployment.ray_accelerator_type
    if args.deployment.autoscaling:
        kwargs["server_cls"] = ENGINE_SERVER_CLS
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    return kwargs


def request_router_config(args: ServingArgs, *, model: ModelSource) -> dict[str, Any]:
    """Ray Serve's `request_router_config` for prefix-aware routing (`routing.router`). Pure.

    The router tokenizes prompts with the model's tokenizer: it loads it from where vLLM does
    (`model.location`), or falls back to byte blocks where the files are not on its node.
    """
    router = args.router
    return {
        "request_router_class": ROUTER_CLS,
        "request_router_kwargs": {
            "block_size": router.block_size,
            "max_load_ratio": router.max_load_ratio,
            "index_max_blocks": router.index_max_blocks,
            "tokenizer_source": model.location,
            "trust_remote_code": args.engine.trust_remote_code,
            **ROUTER_COSTS[args.deployment.accelerator],
        },
    }


def unset_env(args: ServingArgs) -> list[str]:
    """Environment variables the engine replica must not see, because they override `args`."""
    if args.deployment.accelerator is Accelerator.CPU and args.engine.kv_cache_memory_bytes is not None:
        return [CPU_KV_CACHE_SPACE_ENV]
    return []


def openai_app_args(
    args: ServingArgs,
    *,
    model: ModelSource,
    draft: ModelSource | None = None,
    ingress_cls: str | type | None = None,
    ingress_extra_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `LLMServingArgs` dict for `build_openai_app` (the LLMConfig given as kwargs). Pure."""
    return {
        "llm_configs": [llm_config_kwargs(args, model=model, draft=draft)],
        "ingress_cls_config": {
            "ingress_cls": INGRESS_CLS if ingress_cls is None else ingress_cls,
            "ingress_extra_kwargs": dict(ingress_extra_kwargs or {}),
        },
        "ingress_deployment_config": ingress_deployment_config(args),
    }


def resolve_sources(
    args: ServingArgs, *, cache_dir: Path | str | None = None
) -> tuple[ModelSource, ModelSource | None]:
    """The target model's and the draft model's sources."""
    model = resolve_model_source(args.engine.model, cache_dir=cache_dir)
    speculative = args.engine.speculative
    draft = resolve_model_source(speculative.model, cache_dir=cache_dir) if speculative else None
    return model, draft


def check_model_sources(args: ServingArgs, *, cache_dir: Path | str | None = None) -> None:
    """Fail with a one-line `ModelSourceError` when a model the engine needs is not on this node.

    For local runs (`llmdeploy serve`), before deploying: `build_app` cannot do it because in a
    cluster it runs on the head, which does not mount the workers' model volumes. The engine
    nodes run the same check (`EngineNodeSetup`); there the error ends the deployment's status
    message (`... EngineNodeSetup: model path /x does not exist on node <host> ...`).
    """
    for source in resolve_sources(args, cache_dir=cache_dir):
        if source is not None:
            check_model_source(source)


def ingress_kwargs(args: ServingArgs) -> dict[str, Any]:
    """The ingress's own options (response cache, API keys) as `ingress_extra_kwargs`. Pure."""
    from llmdeploy.serving.ingress import ingress_options

    return ingress_options(
        name=args.name,
        model_identity=args.model_identity,
        response_cache=args.response_cache,
        api_keys_env=args.api_keys_env,
        max_replicas=ingress_deployment_config(args)["autoscaling_config"]["max_replicas"],
    )


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve entry point: validate `args` as `ServingArgs` and build the OpenAI app."""
    from ray.serve.llm import LLMConfig, build_openai_app

    serving = ServingArgs.model_validate(args)
    model, draft = resolve_sources(serving)
    llm_config = LLMConfig(**llm_config_kwargs(serving, model=model, draft=draft))
    app_args = openai_app_args(serving, model=model, draft=draft, ingress_extra_kwargs=ingress_kwargs(serving))
    app_args["llm_configs"] = [llm_config]
    application: Application = build_openai_app(app_args)
    return application


@functools.cache
def _engine_node_setup_class() -> type:
    from ray.llm._internal.common.callbacks.base import CallbackBase

    class EngineNodeSetup(CallbackBase):
        """Runs on every node of an engine replica before vLLM starts (Ray Serve LLM callback).

        Ray Serve LLM's public `callback_config` takes a subclass of its callback base, which
        it does not re-export: one of the two internal Ray imports of this module (the other is
        `OpenAIHTTPException`, for the ingress). `test_engine_arguments` pins both.
        """

        def __init__(
            self,
            *,
            sources: list[dict[str, Any]] | None = None,
            unset_env: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.sources = [ModelSource.from_json(item) for item in sources or []]
            self.unset_env = list(unset_env or [])

        async def on_before_node_init(self) -> None:
            # Runs in the replica process, which builds vLLM's config and forks its engine.
            for name in self.unset_env:
                if os.environ.pop(name, None) is not None:
                    _logger.warning("removed %s from the engine's environment: it overrides the arguments", name)

        def on_before_download_model_files_distributed(self) -> None:
            for source in self.sources:
                prepare_model_source(source)

    EngineNodeSetup.__module__ = __name__
    EngineNodeSetup.__qualname__ = "EngineNodeSetup"
    return EngineNodeSetup


@functools.cache
def _ingress_class() -> type:
    from fastapi import HTTPException
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
    from ray.serve.llm.ingress import OpenAiIngress as RayOpenAiIngress

    from llmdeploy.serving.ingress import IngressExtensions

    class OpenAiIngress(IngressExtensions, RayOpenAiIngress):
        """Ray Serve LLM's OpenAI ingress, answering an unknown model with an OpenAI error body.

        Ray 2.60 raises FastAPI's `HTTPException` for a model it does not serve, which FastAPI
        answers with `{"detail": ...}` before Ray's own error middleware sees it; OpenAI
        clients expect `{"error": {...}}`. Re-raised as Ray's `OpenAIHTTPException`, it goes
        through that middleware like every other error. `IngressExtensions`
        (`llmdeploy.serving.ingress`) adds the response cache and API-key authentication.
        """

        async def _get_model_id(self, model: str | None) -> str:
            try:
                model_id: str = await super()._get_model_id(model)
            except HTTPException as err:
                raise OpenAIHTTPException(
                    status_code=err.status_code, message=str(err.detail), type="invalid_request_error"
                ) from None
            return model_id

    OpenAiIngress.__module__ = __name__
    OpenAiIngress.__qualname__ = "OpenAiIngress"
    return OpenAiIngress


class EngineLoadRecorder:
    """A vLLM stat logger that keeps the scheduler's latest numbers for the autoscaling policy.

    vLLM's async engine hands every step's `SchedulerStats` (running and waiting requests,
    KV-cache usage) and `IterationStats` (finished requests) to the loggers of its
    `StatLoggerManager`; this one only keeps the last values per engine (data-parallel
    engines report separately) and counts finished requests. It has the interface of vLLM's
    aggregate stat loggers, which `StatLoggerManager` calls: `record`, `log`,
    `log_engine_initialized`, `record_sleep_state`.
    """

    def __init__(self) -> None:
        self.running: dict[int, int] = {}
        self.waiting: dict[int, int] = {}
        self.kv_cache_usage: dict[int, float] = {}
        self.finished = 0

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self.running[engine_idx] = int(scheduler_stats.num_running_reqs)
            self.waiting[engine_idx] = int(scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs)
            self.kv_cache_usage[engine_idx] = float(scheduler_stats.kv_cache_usage)
        if iteration_stats is not None:
            self.finished += len(iteration_stats.finished_requests)

    def log(self) -> None:
        """Nothing to print: the numbers go to the autoscaler."""

    def log_engine_initialized(self) -> None:
        """Nothing to print."""

    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        """Sleep mode does not change the queue."""


def attach_load_recorder(engine: Any) -> EngineLoadRecorder | None:
    """Add an `EngineLoadRecorder` to a started Ray Serve LLM vLLM engine; None where it cannot.

    vLLM 0.29's `AsyncLLM` takes stat loggers only when it is built, which Ray Serve LLM does
    inside `VLLMEngine.start` without a hook, so the recorder joins the running engine's
    `logger_manager.stat_loggers` (through `VLLMEngine._engine_client`, the third internal Ray
    name this module uses; `test_autoscaling_engine` pins it).
    """
    client = getattr(engine, "_engine_client", None)
    loggers = getattr(getattr(client, "logger_manager", None), "stat_loggers", None)
    if not isinstance(loggers, list):
        _logger.warning("vLLM's stat loggers are not reachable; autoscaling sees only Ray's request counts")
        return None
    recorder = EngineLoadRecorder()
    loggers.append(recorder)
    return recorder


def engine_in_flight(engine: Any) -> int | None:
    """Requests the engine has not finished (its frontend's count), None where unknown."""
    processor = getattr(getattr(engine, "_engine_client", None), "output_processor", None)
    counter = getattr(processor, "get_num_unfinished_requests", None)
    return int(counter()) if callable(counter) else None


@functools.cache
def _llm_server_class() -> type:
    from ray.serve.llm.deployment import LLMServer as RayLLMServer

    class LLMServer(RayLLMServer):
        """Ray Serve LLM's engine deployment, plus `record_autoscaling_stats` for the policy.

        Ray Serve calls `record_autoscaling_stats()` on each replica every few seconds and
        hands the values to the autoscaling policy as `ctx.aggregated_metrics` (per replica,
        averaged over the look-back window). The class keeps Ray's name, so the deployment is
        still `LLMServer:<name>` (the operator reads it by that prefix). `LLMConfig.server_cls`
        is Ray Serve LLM's public way to supply it.
        """

        _load_recorder: EngineLoadRecorder | None = None
        _finished_seen: int = 0
        _finished_at: float = 0.0

        async def start(self) -> None:
            await super().start()  # type: ignore[no-untyped-call]
            self._load_recorder = attach_load_recorder(self.engine)
            self._finished_at = time.monotonic()

        async def record_autoscaling_stats(self) -> dict[str, float]:
            recorder = self._load_recorder
            if recorder is None:
                return {}
            now = time.monotonic()
            elapsed = now - self._finished_at
            rate = (recorder.finished - self._finished_seen) / elapsed if elapsed > 0 else 0.0
            self._finished_seen, self._finished_at = recorder.finished, now
            running, waiting = sum(recorder.running.values()), sum(recorder.waiting.values())
            if engine_in_flight(self.engine) == 0:
                # The scheduler reports only while it steps; an idle engine's last report may predate its drain.
                running = waiting = 0
            usage = list(recorder.kv_cache_usage.values())
            return {
                WAITING_KEY: float(waiting),
                RUNNING_KEY: float(running),
                KV_CACHE_USAGE_KEY: sum(usage) / len(usage) if usage else 0.0,
                FINISHED_RATE_KEY: rate,
            }

    LLMServer.__module__ = __name__
    LLMServer.__qualname__ = "LLMServer"
    return LLMServer


def __getattr__(name: str) -> Any:
    # These classes derive from Ray classes; they are made on first use so that importing this
    # module (the operator's tests, the pure mapping) does not import Ray and vLLM.
    if name == "EngineNodeSetup":
        return _engine_node_setup_class()
    if name == "OpenAiIngress":
        return _ingress_class()
    if name == "LLMServer":
        return _llm_server_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
