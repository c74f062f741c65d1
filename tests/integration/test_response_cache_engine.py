"""The response cache and API keys on the real serving stack (Ray Serve LLM + vLLM on the CPU).

One stack for the module: `examples/tiny-cpu.yaml` with `spec.responseCache` on (Redis backend,
against a real redis-server this module starts) and `spec.auth.apiKeysSecret`, rendered by the
operator's own functions; the Secrets' values reach the processes as environment variables, as
the rendered `secretKeyRef`s would put them there. Slow (about a minute to start).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
pytest.importorskip("openai")

import httpx
import openai
import yaml

from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.render import Owner, render_rayservice
from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.config import API_KEYS_ENV, APPLICATION_NAME, REDIS_URL_ENV, ServingArgs
from llmdeploy.testing.local_stack import scrape
from llmdeploy.testing.redis_server import RedisServer

pytestmark = pytest.mark.engine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"
MODEL = "tiny"
KEYS = ("sk-test-one", "sk-test-two")
TENANT_HEADER = "x-tenant-id"
MAX_ENTRIES = 4
METRICS_TIMEOUT_S = 60.0
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Export metrics every second so the test sees the gauge move without waiting 10 s.
    "RAY_metrics_report_interval_ms": "1000",
}


@dataclass(frozen=True)
class Stack:
    base_url: str
    metrics_url: str
    http: httpx.Client
    redis: RedisServer


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serving_args(tmp: Path) -> ServingArgs:
    """examples/tiny-cpu.yaml with the response cache (Redis) and API keys on, as the operator renders it."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["responseCache"] = {
        "enabled": True,
        "backend": "redis",
        "redisUrlSecret": {"name": "cache-redis", "key": "url"},
        "maxEntries": MAX_ENTRIES,
        "ttlSeconds": 600,
    }
    doc["spec"]["auth"] = {"apiKeysSecret": {"name": "api-keys", "key": "keys"}}
    # Ray's default router: this module is about the ingress.
    doc["spec"]["routing"] = {"prefixAware": False}
    manifest = tmp / "tiny-cache.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    ((obj, _),) = load_manifests(str(manifest))
    rendered = render_rayservice(Owner(obj.metadata.name, "default"), obj.spec, served_model_name=obj.served_model_name)
    text = json.dumps(rendered)
    assert "sk-test" not in text and "redis://" not in text  # the Secrets are referenced, never copied
    (application,) = yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"]
    return ServingArgs.model_validate(application["args"])


def metric(samples: dict[str, float], name: str) -> list[float]:
    return [v for series, v in samples.items() if series == name or series.startswith(name + "{")]


def wait_for_metric(url: str, name: str, predicate: Any) -> list[float]:
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    values: list[float] = []
    while time.monotonic() < deadline:
        values = metric(scrape(url), name)
        if values and predicate(values):
            return values
        time.sleep(1.0)
    raise AssertionError(f"{name} never satisfied the condition; last values {values}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import ray
    from ray import serve

    tmp = tmp_path_factory.mktemp("cache-stack")
    with RedisServer(workdir=tmp_path_factory.mktemp("redis")) as redis, pytest.MonkeyPatch.context() as env:
        for key, value in ENGINE_ENV.items():
            env.setenv(key, os.environ.get(key, value))
        for key in (tinymodel.MODEL_CACHE_ENV, "VLLM_CACHE_ROOT", "TORCH_HOME"):
            if key not in os.environ:
                env.setenv(key, str(tmp_path_factory.mktemp(key.lower())))
        env.setenv(REDIS_URL_ENV, redis.url)
        env.setenv(API_KEYS_ENV, "\n".join(KEYS))
        tinymodel.ensure_tiny_model("tiny")
        args = serving_args(tmp)
        assert args.api_keys_env == API_KEYS_ENV
        assert args.response_cache.redis_url_env == REDIS_URL_ENV

        http_port, metrics_port = free_port(), free_port()
        ray.init(address="local", num_cpus=4, include_dashboard=False, _metrics_export_port=metrics_port)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
            serve.run(app.build_app(args.model_dump(mode="json")), name=APPLICATION_NAME, route_prefix="/")
            base_url = f"http://127.0.0.1:{http_port}"
            with httpx.Client(base_url=base_url, timeout=120) as http:
                yield Stack(base_url, f"http://127.0.0.1:{metrics_port}/metrics", http, redis)
        finally:
            serve.shutdown()
            ray.shutdown()


def auth(key: str = KEYS[0], **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def chat_body(content: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **fields,
    }


def post_chat(stack: Stack, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return stack.http.post("/v1/chat/completions", json=body, headers=headers if headers is not None else auth())


def test_a_missing_or_wrong_api_key_gets_401_with_an_openai_error(stack: Stack) -> None:
    for headers in ({}, auth("sk-wrong")):
        response = post_chat(stack, chat_body("hi"), headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] in ("missing_api_key", "invalid_api_key")
    assert stack.http.get("/v1/models").status_code == 401
    assert stack.http.get("/v1/models", headers=auth(KEYS[1])).status_code == 200
    # The official client, with a wrong key, sees OpenAI's AuthenticationError.
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_an_oversized_body_is_refused_with_413_after_authentication(stack: Stack) -> None:
    body = chat_body("x" * (9 * 2**20))
    assert post_chat(stack, body, {}).status_code == 401
    response = post_chat(stack, body)
    assert response.status_code == 413
    assert "error" in response.json()


def test_a_repeated_deterministic_request_is_answered_from_the_cache(stack: Stack) -> None:
    first = post_chat(stack, chat_body("Tell me about caches."))
    assert first.status_code == 200
    assert first.headers["x-llmdeploy-cache"] == "miss"
    time.sleep(0.3)  # the entry is stored after the response is sent
    second = post_chat(stack, chat_body("Tell me about caches."))
    assert second.status_code == 200
    assert second.headers["x-llmdeploy-cache"] == "hit"
    assert second.content == first.content
    # Transport fields are not part of the key.
    third = post_chat(stack, chat_body("Tell me about caches.", user="someone-else"))
    assert third.headers["x-llmdeploy-cache"] == "hit"


def test_a_streaming_request_is_replayed_from_a_cached_response(stack: Stack) -> None:
    cached = post_chat(stack, chat_body("Stream this later."))
    assert cached.headers["x-llmdeploy-cache"] == "miss"
    time.sleep(0.3)
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS[0], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream this later."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-llmdeploy-cache"] == "hit"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    message = cached.json()["choices"][0]
    assert text == message["message"]["content"]
    assert finishes == [message["finish_reason"]]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == cached.json()["usage"]["completion_tokens"]


def test_a_stream_is_stored_as_it_passes_and_replays_the_same_text(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS[0], max_retries=0)

    def stream() -> tuple[str, str, list[str | None]]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A fresh streamed prompt."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-llmdeploy-cache"], text, [c.choices[0].finish_reason for c in chunks if c.choices]

    first, text, finishes = stream()
    assert first == "miss"
    time.sleep(0.3)
    second, replayed, replay_finishes = stream()
    assert second == "hit"
    assert replayed == text
    assert [f for f in replay_finishes if f] == [f for f in finishes if f]
    # The non-streaming form of the same request reads the entry the stream left.
    assert post_chat(stack, chat_body("A fresh streamed prompt.")).json()["choices"][0]["message"]["content"] == text


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    events = [line[len("data:") :].strip() for line in response.text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_the_replayed_stream_has_the_shape_of_the_engines_stream(stack: Stack) -> None:
    body = chat_body("Compare the stream shapes.", stream=True, stream_options={"include_usage": True})
    real = post_chat(stack, body)
    time.sleep(0.3)
    replayed = post_chat(stack, body)
    assert (real.headers["x-llmdeploy-cache"], replayed.headers["x-llmdeploy-cache"]) == ("miss", "hit")
    assert real.headers["content-type"].startswith("text/event-stream")
    assert replayed.headers["content-type"].startswith("text/event-stream")
    real_chunks, replay_chunks = sse_chunks(real), sse_chunks(replayed)
    for chunks in (real_chunks, replay_chunks):
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    # Every field the replay sends is one the engine's own chunks have.
    real_keys = set().union(*(c.keys() for c in real_chunks))
    real_choice_keys = set().union(*(ch.keys() for c in real_chunks for ch in c["choices"]))
    assert set().union(*(c.keys() for c in replay_chunks)) <= real_keys
    assert set().union(*(ch.keys() for c in replay_chunks for ch in c["choices"])) <= real_choice_keys

    def text(chunks: list[dict[str, Any]]) -> str:
        return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])

    assert text(replay_chunks) == text(real_chunks)


def test_one_tenant_never_receives_another_tenants_entry(stack: Stack) -> None:
    body = chat_body("Tenant-scoped question.")
    a1 = post_chat(stack, body, auth(**{TENANT_HEADER: "a"}))
    time.sleep(0.3)
    a2 = post_chat(stack, body, auth(**{TENANT_HEADER: "a"}))
    b1 = post_chat(stack, body, auth(**{TENANT_HEADER: "b"}))
    other_key = post_chat(stack, body, auth(KEYS[1], **{TENANT_HEADER: "a"}))
    assert [r.headers["x-llmdeploy-cache"] for r in (a1, a2, b1, other_key)] == ["miss", "hit", "miss", "miss"]


def test_failed_and_sampled_requests_are_never_served_from_the_cache(stack: Stack) -> None:
    too_long = chat_body("x " * 600, max_tokens=8)  # over maxModelLen 512: 400
    for _ in range(2):
        response = post_chat(stack, too_long)
        assert response.status_code == 400
        assert response.headers.get("x-llmdeploy-cache") != "hit"
        assert "error" in response.json()
    sampled = chat_body("Sampled.", temperature=1.0)
    assert post_chat(stack, sampled).headers["x-llmdeploy-cache"] == "bypass"
    seeded = chat_body("Sampled.", temperature=1.0, seed=3)
    assert post_chat(stack, seeded).headers["x-llmdeploy-cache"] == "miss"
    no_cache = post_chat(stack, chat_body("Tell me about caches."), auth(**{"Cache-Control": "no-cache"}))
    assert no_cache.headers["x-llmdeploy-cache"] == "bypass"


def test_a_stopped_redis_degrades_to_uncached_serving_and_recovers(stack: Stack) -> None:
    body = chat_body("Survives a Redis outage.")
    stack.redis.stop()
    try:
        for _ in range(3):
            response = post_chat(stack, body)
            assert response.status_code == 200
            assert response.headers["x-llmdeploy-cache"] == "bypass"
        wait_for_metric(stack.metrics_url, "ray_llmdeploy_response_cache_backend_up", lambda v: max(v) == 0)
        errors = wait_for_metric(stack.metrics_url, "ray_llmdeploy_response_cache_backend_errors_total", bool)
        assert sum(errors) >= 1
    finally:
        stack.redis.start()
    time.sleep(2.5)  # the retry window
    assert post_chat(stack, body).headers["x-llmdeploy-cache"] == "miss"
    time.sleep(0.3)
    assert post_chat(stack, body).headers["x-llmdeploy-cache"] == "hit"
    wait_for_metric(stack.metrics_url, "ray_llmdeploy_response_cache_backend_up", lambda v: min(v) == 1)


def test_the_cache_metrics_are_exported_by_ray(stack: Stack) -> None:
    # More distinct entries than maxEntries, so the bound evicts.
    for i in range(MAX_ENTRIES + 1):
        assert post_chat(stack, chat_body(f"Filler {i}.")).status_code == 200
    time.sleep(0.3)
    results = wait_for_metric(stack.metrics_url, "ray_llmdeploy_response_cache_evictions_total", bool)
    assert sum(results) >= 1
    samples = scrape(stack.metrics_url)
    by_result = {
        result: sum(
            metric(
                {s: v for s, v in samples.items() if f'result="{result}"' in s},
                "ray_llmdeploy_response_cache_requests_total",
            )
        )
        for result in ("hit", "miss", "bypass")
    }
    assert by_result["hit"] >= 5 and by_result["miss"] >= 5 and by_result["bypass"] >= 4
    assert sum(metric(samples, "ray_llmdeploy_response_cache_tokens_saved_total")) >= 8
    assert metric(samples, "ray_llmdeploy_response_cache_backend_up")
    assert metric(samples, "ray_llmdeploy_response_cache_backend_errors_total")


def test_the_memory_backend_can_be_shared_through_one_actor(stack: Stack) -> None:
    from llmdeploy.serving.cache.shared import SharedMemoryBackend

    async def exercise() -> tuple[bytes | None, bytes | None, int]:
        one = SharedMemoryBackend(deployment="shared-test", max_entries=2)
        two = SharedMemoryBackend(deployment="shared-test", max_entries=2)  # another replica finds the same actor
        await one.set("k", b"v", 60)
        seen = await two.get("k")
        await two.set("k2", b"v2", 60)
        evicted = await two.set("k3", b"v3", 60)
        return seen, await one.get("absent"), evicted

    seen, absent, evicted = asyncio.run(exercise())
    assert (seen, absent, evicted) == (b"v", None, 1)
