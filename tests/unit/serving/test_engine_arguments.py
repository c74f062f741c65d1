"""`ServingArgs` → Ray Serve LLM configuration: the pure mapping of `llmdeploy.serving.app`.

No Ray cluster is started here. Where Ray Serve LLM and vLLM are installed, the produced
dictionaries are also validated by their own models (`LLMConfig`, `LLMServingArgs`, vLLM's
engine-argument names), so a renamed option fails here rather than at deploy time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.config import (
    Accelerator,
    DeploymentArgs,
    EngineArgs,
    ResponseCacheArgs,
    ResponseCacheBackend,
    RouterArgs,
    ServingArgs,
    SpeculativeArgs,
)

HAS_RAY_LLM = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("vllm") is not None
needs_ray_llm = pytest.mark.skipif(not HAS_RAY_LLM, reason="ray[serve] and vLLM are not installed")


def make_args(*, engine: dict[str, Any] | None = None, deployment: dict[str, Any] | None = None) -> ServingArgs:
    engine_fields: dict[str, Any] = {
        "model": "builtin://tiny",
        "served_model_name": "tiny-chat",
        "max_model_len": 512,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 512,
        "enable_chunked_prefill": True,
        "enforce_eager": True,
        "kv_cache_memory_bytes": 64 * 2**20,
    }
    deployment_fields: dict[str, Any] = {
        "accelerator": Accelerator.CPU,
        "num_replicas": 2,
        "autoscaling": False,
        "min_replicas": 1,
        "max_replicas": 4,
        "target_queue_depth": 4.0,
        "upscale_delay_s": 15.0,
        "downscale_delay_s": 300.0,
        "max_ongoing_requests": 16,
        "max_queued_requests": 64,
    }
    return ServingArgs(
        name="demo",
        model_identity="0123456789abcdef",
        engine=EngineArgs(**(engine_fields | (engine or {}))),
        deployment=DeploymentArgs(**(deployment_fields | (deployment or {}))),
        router=RouterArgs(prefix_aware=True, max_load_ratio=1.5, index_max_blocks=100_000),
        response_cache=ResponseCacheArgs(
            enabled=False,
            ttl_s=60,
            max_entries=1000,
            backend=ResponseCacheBackend.MEMORY,
            cache_nondeterministic=False,
            tenant_header="x-tenant",
        ),
    )


def config_kwargs(args: ServingArgs, cache_dir: Path) -> dict[str, Any]:
    model, draft = app.resolve_sources(args, cache_dir=cache_dir)
    return app.llm_config_kwargs(args, model=model, draft=draft)


# --- model sources -----------------------------------------------------------------------


def test_builtin_source_resolves_to_the_cached_model_folder(tmp_path: Path) -> None:
    source = app.resolve_model_source("builtin://tiny", cache_dir=tmp_path)

    assert source.kind is app.SourceKind.BUILTIN
    assert source.preset == "tiny"
    assert Path(source.location) == tinymodel.model_path("tiny", tmp_path)
    assert Path(source.location).parent == tmp_path
    assert not Path(source.location).exists(), "resolving must not build"


def test_gpu_regime_source_resolves_to_its_own_folder(tmp_path: Path) -> None:
    tiny = app.resolve_model_source("builtin://tiny", cache_dir=tmp_path)
    big = app.resolve_model_source("builtin://gpu-regime", cache_dir=tmp_path)

    assert big.preset == "gpu-regime"
    assert big.location != tiny.location


def test_unknown_builtin_source_is_a_one_line_error_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(app.ModelSourceError) as raised:
        app.resolve_model_source("builtin://huge", cache_dir=tmp_path)

    message = str(raised.value)
    assert "\n" not in message
    assert "builtin://huge" in message
    assert "builtin://tiny" in message and "builtin://gpu-regime" in message


@pytest.mark.parametrize("source", ["/models/llama", "./models/llama", "../llama", "~/llama", "file:///models/llama"])
def test_paths_are_local_and_made_absolute(source: str) -> None:
    resolved = app.resolve_model_source(source)

    assert resolved.kind is app.SourceKind.LOCAL
    assert Path(resolved.location).is_absolute()
    assert resolved.location.endswith("llama")
    assert "~" not in resolved.location and "file:" not in resolved.location


@pytest.mark.parametrize("source", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-0.5B", "gpt2"])
def test_hub_ids_pass_through_unchanged(source: str) -> None:
    resolved = app.resolve_model_source(source)

    assert resolved.kind is app.SourceKind.HUB
    assert resolved.location == source


def test_bare_relative_name_of_an_existing_folder_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    resolved = app.resolve_model_source("org/model")

    assert resolved.kind is app.SourceKind.LOCAL
    assert resolved.location == str(tmp_path / "org" / "model")


def test_missing_local_path_is_a_one_line_error(tmp_path: Path) -> None:
    missing = app.resolve_model_source(str(tmp_path / "nowhere"))

    with pytest.raises(app.ModelSourceError) as raised:
        app.check_model_source(missing)

    message = str(raised.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message
    assert "does not exist" in message


def test_local_folder_without_config_json_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(app.ModelSourceError, match=r"no config\.json"):
        app.check_model_source(app.resolve_model_source(str(tmp_path)))


def test_local_model_folder_passes_the_check(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    app.check_model_source(app.resolve_model_source(str(tmp_path)))


def test_check_model_sources_covers_the_draft_model(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "config.json").write_text("{}")
    args = make_args(
        engine={
            "model": str(tmp_path / "target"),
            "speculative": SpeculativeArgs(model=str(tmp_path / "draft"), num_speculative_tokens=2),
        }
    )

    with pytest.raises(app.ModelSourceError, match="draft"):
        app.check_model_sources(args, cache_dir=tmp_path)


def test_hub_and_builtin_sources_are_not_checked_on_disk(tmp_path: Path) -> None:
    app.check_model_source(app.resolve_model_source("org/not-downloaded"))
    app.check_model_source(app.resolve_model_source("builtin://tiny", cache_dir=tmp_path))


# --- engine arguments --------------------------------------------------------------------


def test_engine_arguments_are_mapped_by_vllm_names(tmp_path: Path) -> None:
    args = make_args(
        engine={
            "quantization": "fp8",
            "kv_cache_dtype": "fp8_e4m3",
            "max_num_seqs": 32,
            "max_num_batched_tokens": 2048,
            "enable_chunked_prefill": False,
            "max_model_len": 4096,
            "tensor_parallel_size": 2,
            "enforce_eager": False,
            "kv_cache_memory_bytes": None,
            "revision": "abc123",
            "trust_remote_code": True,
        }
    )

    engine = config_kwargs(args, tmp_path)["engine_kwargs"]

    assert engine == {
        "quantization": "fp8",
        "kv_cache_dtype": "fp8_e4m3",
        "max_num_seqs": 32,
        "max_num_batched_tokens": 2048,
        "enable_chunked_prefill": False,
        "max_model_len": 4096,
        "tensor_parallel_size": 2,
        "enable_prefix_caching": True,
        "enforce_eager": False,
        "revision": "abc123",
        "trust_remote_code": True,
        "disable_log_stats": False,
        "enable_prompt_tokens_details": True,
    }


def test_unset_optional_engine_arguments_are_left_to_vllm(tmp_path: Path) -> None:
    args = make_args(engine={"max_model_len": None, "quantization": None, "kv_cache_memory_bytes": None})

    engine = config_kwargs(args, tmp_path)["engine_kwargs"]

    for absent in ("max_model_len", "quantization", "kv_cache_memory_bytes", "revision", "speculative_config"):
        assert absent not in engine
    # Ray Serve LLM sets these from model_loading_config and refuses them in engine_kwargs.
    assert "model" not in engine and "served_model_name" not in engine


def test_cpu_kv_cache_is_sized_in_bytes_and_the_legacy_env_var_is_blanked(tmp_path: Path) -> None:
    kwargs = config_kwargs(make_args(), tmp_path)

    assert kwargs["engine_kwargs"]["kv_cache_memory_bytes"] == 64 * 2**20
    assert kwargs["engine_kwargs"]["enforce_eager"] is True
    # VLLM_CPU_KVCACHE_SPACE would silently override kv_cache_memory_bytes.
    assert kwargs["callback_config"]["callback_kwargs"]["unset_env"] == ["VLLM_CPU_KVCACHE_SPACE"]
    assert "runtime_env" not in kwargs


def test_prefix_caching_follows_the_arguments(tmp_path: Path) -> None:
    on = config_kwargs(make_args(), tmp_path)["engine_kwargs"]
    off = config_kwargs(make_args(engine={"enable_prefix_caching": False}), tmp_path)["engine_kwargs"]

    assert on["enable_prefix_caching"] is True
    assert off["enable_prefix_caching"] is False


def test_speculative_draft_model_becomes_speculative_config(tmp_path: Path) -> None:
    args = make_args(engine={"speculative": SpeculativeArgs(model="org/draft-1b", num_speculative_tokens=4)})

    engine = config_kwargs(args, tmp_path)["engine_kwargs"]

    assert engine["speculative_config"] == {"model": "org/draft-1b", "num_speculative_tokens": 4}


def test_builtin_draft_model_resolves_and_is_prepared_on_engine_nodes(tmp_path: Path) -> None:
    args = make_args(engine={"speculative": SpeculativeArgs(model="builtin://tiny", num_speculative_tokens=2)})

    kwargs = config_kwargs(args, tmp_path)

    draft_path = str(tinymodel.model_path("tiny", tmp_path))
    assert kwargs["engine_kwargs"]["speculative_config"]["model"] == draft_path
    sources = kwargs["callback_config"]["callback_kwargs"]["sources"]
    assert [s["location"] for s in sources] == [draft_path, draft_path]


def test_model_loading_config_names_the_served_model_and_the_resolved_source(tmp_path: Path) -> None:
    kwargs = config_kwargs(make_args(engine={"model": "org/model"}), tmp_path)

    assert kwargs["model_loading_config"] == {"model_id": "tiny-chat", "model_source": "org/model"}
    assert kwargs["log_engine_metrics"] is True
    assert kwargs["callback_config"]["callback_class"] == app.ENGINE_NODE_SETUP


# --- accelerators ------------------------------------------------------------------------


def test_cpu_replicas_ask_for_the_cpu_accelerator_and_no_accelerator_type(tmp_path: Path) -> None:
    kwargs = config_kwargs(make_args(deployment={"ray_accelerator_type": "H100"}), tmp_path)

    assert kwargs["accelerator_config"] == {"kind": "cpu"}
    assert "accelerator_type" not in kwargs


def test_gpu_replicas_pin_the_ray_accelerator_type(tmp_path: Path) -> None:
    args = make_args(
        engine={"kv_cache_memory_bytes": None, "enforce_eager": False},
        deployment={"accelerator": Accelerator.GPU, "ray_accelerator_type": "H100"},
    )

    kwargs = config_kwargs(args, tmp_path)

    assert kwargs["accelerator_config"] == {"kind": "gpu"}
    assert kwargs["accelerator_type"] == "H100"
    assert kwargs["callback_config"]["callback_kwargs"]["unset_env"] == []


def test_gpu_replicas_without_an_accelerator_type_take_any_gpu(tmp_path: Path) -> None:
    args = make_args(engine={"kv_cache_memory_bytes": None}, deployment={"accelerator": Accelerator.GPU})

    kwargs = config_kwargs(args, tmp_path)

    assert kwargs["accelerator_config"] == {"kind": "gpu"}
    assert "accelerator_type" not in kwargs


# --- deployment options ------------------------------------------------------------------


def test_fixed_replicas_set_num_replicas_and_explicit_admission_limits() -> None:
    config = app.deployment_config(make_args())

    assert config == {"name": "demo", "num_replicas": 2, "max_ongoing_requests": 16, "max_queued_requests": 64}


def test_autoscaling_hands_ray_the_queue_depth_policy_and_leaves_it_the_delays() -> None:
    args = make_args(deployment={"autoscaling": True, "min_replicas": 1, "max_replicas": 4, "target_queue_depth": 3})

    config = app.deployment_config(args)

    assert "num_replicas" not in config
    assert config["max_ongoing_requests"] == 16
    autoscaling = config["autoscaling_config"]
    assert autoscaling == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        # 8 running (max_num_seqs) + 3 waiting per replica: unused by the policy, exported by Ray.
        "target_ongoing_requests": 11.0,
        # The policy applies the spec's delays itself; Ray's would make each move wait twice.
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "look_back_period_s": app.LOOK_BACK_S,
        "policy": {
            "policy_function": "llmdeploy.serving.autoscaling:QueueDepthPolicy",
            "policy_kwargs": app.scaling_config(args.deployment, max_num_seqs=8).model_dump(mode="json"),
        },
    }
    kwargs = autoscaling["policy"]["policy_kwargs"]
    assert (kwargs["target_queue_depth"], kwargs["max_num_seqs"]) == (3.0, 8)
    assert (kwargs["upscale_delay_s"], kwargs["downscale_delay_s"]) == (15.0, 300.0)


def test_scale_to_zero_lowers_the_floor_and_hands_the_idle_time_to_the_policy() -> None:
    args = make_args(deployment={"autoscaling": True, "min_replicas": 2, "scale_to_zero_idle_s": 900})

    autoscaling = app.deployment_config(args)["autoscaling_config"]

    assert autoscaling["min_replicas"] == 0
    assert autoscaling["initial_replicas"] == 2
    assert autoscaling["downscale_to_zero_delay_s"] == 0.0
    assert autoscaling["policy"]["policy_kwargs"]["scale_to_zero_idle_s"] == 900


def test_zero_queued_requests_maps_to_rays_smallest_bound() -> None:
    assert app.deployment_config(make_args(deployment={"max_queued_requests": 0}))["max_queued_requests"] == 1


def test_ingress_admits_what_the_engines_hold_and_never_uses_the_1e9_defaults() -> None:
    fixed = app.ingress_deployment_config(make_args())
    scaling = app.ingress_deployment_config(make_args(deployment={"autoscaling": True, "max_replicas": 4}))

    # 2 replicas x 16 ongoing + 64 queued.
    assert fixed["max_ongoing_requests"] == 2 * 16 + 64
    assert fixed["autoscaling_config"]["max_replicas"] == 2
    assert fixed["autoscaling_config"]["target_ongoing_requests"] == 16.0
    assert scaling["max_ongoing_requests"] == 4 * 16 + 64
    assert scaling["autoscaling_config"]["min_replicas"] == 1
    for config in (fixed, scaling):
        # Beyond that, the proxy's queue is bounded too and sheds with Retry-After.
        assert config["max_queued_requests"] == 64
        assert config["backpressure_config"] == {"retry_after_s": app.SHED_RETRY_AFTER_S}
        assert config["max_ongoing_requests"] < 1e9
        assert config["autoscaling_config"]["target_ongoing_requests"] < 1e9


def test_ingress_may_scale_to_zero_only_with_the_engines() -> None:
    args = make_args(deployment={"autoscaling": True, "scale_to_zero_idle_s": 600})

    autoscaling = app.ingress_deployment_config(args)["autoscaling_config"]

    assert autoscaling["min_replicas"] == 0
    assert autoscaling["downscale_to_zero_delay_s"] == 600


def test_openai_app_args_carry_one_llm_config_and_the_ingress_options(tmp_path: Path) -> None:
    args = make_args()
    model, draft = app.resolve_sources(args, cache_dir=tmp_path)

    plain = app.openai_app_args(args, model=model, draft=draft)
    custom = app.openai_app_args(args, model=model, ingress_cls="pkg.mod:Ingress", ingress_extra_kwargs={"a": 1})

    assert plain["llm_configs"] == [app.llm_config_kwargs(args, model=model)]
    assert plain["ingress_deployment_config"] == app.ingress_deployment_config(args)
    assert plain["ingress_cls_config"] == {"ingress_cls": app.INGRESS_CLS, "ingress_extra_kwargs": {}}
    assert custom["ingress_cls_config"] == {"ingress_cls": "pkg.mod:Ingress", "ingress_extra_kwargs": {"a": 1}}


def test_builder_helpers_are_keyword_only() -> None:
    args = make_args()
    model = app.resolve_model_source("org/model")
    with pytest.raises(TypeError):
        app.llm_config_kwargs(args, model)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        app.autoscaling_config(args.deployment, 8)  # type: ignore[call-arg]


# --- validated by Ray Serve LLM and vLLM themselves ---------------------------------------


@needs_ray_llm
@pytest.mark.parametrize(
    ("engine", "deployment"),
    [
        ({}, {}),
        ({}, {"autoscaling": True, "scale_to_zero_idle_s": 300}),
        (
            {"quantization": "fp8", "kv_cache_memory_bytes": None, "tensor_parallel_size": 4},
            {"accelerator": Accelerator.GPU, "ray_accelerator_type": "H100", "autoscaling": True},
        ),
        ({"speculative": SpeculativeArgs(model="org/draft", num_speculative_tokens=3)}, {}),
    ],
)
def test_ray_serve_llm_accepts_the_configuration(
    tmp_path: Path, engine: dict[str, Any], deployment: dict[str, Any]
) -> None:
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig as InternalLLMConfig
    from ray.serve.config import AutoscalingConfig
    from ray.serve.llm import LLMConfig, LLMServingArgs

    args = make_args(engine=engine, deployment=deployment)
    model, draft = app.resolve_sources(args, cache_dir=tmp_path)
    app_args = app.openai_app_args(args, model=model, draft=draft)

    serving = LLMServingArgs.model_validate(app_args)
    (llm_config,) = serving.llm_configs
    # LLMServingArgs validates into the internal base class of the public LLMConfig.
    assert isinstance(llm_config, InternalLLMConfig)
    assert llm_config.model_id == "tiny-chat"
    accelerator_config = LLMConfig.model_validate(app_args["llm_configs"][0]).accelerator_config
    assert accelerator_config is not None and accelerator_config.kind == args.deployment.accelerator
    # Splits engine_kwargs into vLLM's engine and frontend arguments; unknown names raise.
    engine_config = llm_config.get_engine_config()
    assert engine_config is not None
    init = engine_config.get_initialization_kwargs()
    assert init["model"] == model.location
    assert init["served_model_name"] == ["tiny-chat"]
    assert init["enable_prefix_caching"] is True
    AutoscalingConfig(**app_args["ingress_deployment_config"]["autoscaling_config"])
    if "autoscaling_config" in llm_config.deployment_config:
        AutoscalingConfig(**llm_config.deployment_config["autoscaling_config"])


@needs_ray_llm
def test_engine_node_setup_is_a_ray_serve_llm_callback_that_rejects_a_missing_path(tmp_path: Path) -> None:
    from ray.llm._internal.common.callbacks.base import CallbackBase
    from ray.serve.llm import LLMConfig

    setup_cls = app.EngineNodeSetup
    assert issubclass(setup_cls, CallbackBase)
    missing = app.resolve_model_source(str(tmp_path / "absent"))
    args = make_args(engine={"model": str(tmp_path / "absent")})
    llm_config = LLMConfig(**app.llm_config_kwargs(args, model=missing))
    callback = setup_cls(
        llm_config=llm_config, raise_error_on_callback=True, ctx_kwargs={}, sources=[missing.to_json()]
    )

    with pytest.raises(Exception, match="does not exist") as raised:
        callback.run_callback_sync("on_before_download_model_files_distributed")

    assert isinstance(raised.value.__cause__, app.ModelSourceError)


@needs_ray_llm
def test_engine_node_setup_removes_env_vars_that_override_the_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve.llm import LLMConfig

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    args = make_args()
    kwargs = config_kwargs(args, tmp_path)
    callback = app.EngineNodeSetup(
        llm_config=LLMConfig(**kwargs),
        raise_error_on_callback=True,
        ctx_kwargs={},
        **kwargs["callback_config"]["callback_kwargs"],
    )

    callback.run_callback_sync("on_before_node_init")

    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ


@needs_ray_llm
def test_ingress_is_ray_serve_llms_and_overrides_only_the_model_lookup() -> None:
    from ray.serve.llm.ingress import OpenAiIngress

    ingress = app.OpenAiIngress
    assert issubclass(ingress, OpenAiIngress)
    overridden = {name for name in vars(ingress) if callable(vars(ingress)[name]) and not name.startswith("__")}
    assert overridden == {"_get_model_id"}
    # The overridden method is private to Ray Serve LLM: a Ray upgrade that drops it fails here.
    assert callable(getattr(OpenAiIngress, "_get_model_id", None))


def test_no_ray_cluster_was_started() -> None:
    if not HAS_RAY_LLM:
        pytest.skip("ray is not installed")
    import ray

    assert not ray.is_initialized()


# --- request routing ---------------------------------------------------------------------


def test_prefix_aware_routing_names_the_router_with_the_spec_knobs_and_the_model_tokenizer(tmp_path: Path) -> None:
    args = make_args()

    router = config_kwargs(args, tmp_path)["deployment_config"]["request_router_config"]

    assert router["request_router_class"] == app.ROUTER_CLS
    kwargs = router["request_router_kwargs"]
    assert kwargs["max_load_ratio"] == 1.5 and kwargs["index_max_blocks"] == 100_000
    assert kwargs["block_size"] == args.router.block_size
    assert kwargs["tokenizer_source"] == str(tinymodel.model_path("tiny", tmp_path))


def test_the_router_cost_model_follows_the_accelerator(tmp_path: Path) -> None:
    cpu = config_kwargs(make_args(), tmp_path)["deployment_config"]["request_router_config"]
    gpu = config_kwargs(make_args(deployment={"accelerator": Accelerator.GPU}), tmp_path)["deployment_config"][
        "request_router_config"
    ]

    # A CPU prefill weighs more against a queued request than a GPU's: affinity pays off sooner.
    def tokens_per_queued_request(config: dict[str, Any]) -> float:
        kwargs = config["request_router_kwargs"]
        return float(kwargs["queue_s_per_request"] / kwargs["prefill_s_per_token"])

    assert tokens_per_queued_request(cpu) < tokens_per_queued_request(gpu)


def test_without_prefix_awareness_ray_routes_by_load(tmp_path: Path) -> None:
    args = make_args().model_copy(
        update={"router": RouterArgs(prefix_aware=False, max_load_ratio=1.5, index_max_blocks=1024)}
    )

    assert "request_router_config" not in config_kwargs(args, tmp_path)["deployment_config"]
