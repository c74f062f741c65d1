"""The ingress's hooks into Ray Serve LLM, and the options `build_app` hands it."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from llmdeploy.serving.config import (
    API_KEYS_ENV,
    REDIS_URL_ENV,
    ResponseCacheArgs,
    ResponseCacheBackend,
)
from llmdeploy.serving.ingress import (
    CacheConfigError,
    IngressExtensions,
    IngressOptions,
    build_backend,
    bypass_requested,
    include_usage,
    ingress_options,
    request_dict,
)

pytest.importorskip("ray.serve")


def cache_args(**fields: Any) -> ResponseCacheArgs:
    values: dict[str, Any] = {
        "enabled": True,
        "ttl_s": 60,
        "max_entries": 10,
        "backend": ResponseCacheBackend.MEMORY,
        "cache_nondeterministic": False,
        "tenant_header": "x-tenant-id",
    }
    values.update(fields)
    return ResponseCacheArgs(**values)


def test_ingress_extension_points() -> None:
    """The two Ray-internal methods the ingress overrides still exist with the same shape."""
    from ray.serve._private.http_util import ASGIAppReplicaWrapper
    from ray.serve.llm.ingress import OpenAiIngress as RayOpenAiIngress

    from llmdeploy.serving import app

    params = list(inspect.signature(RayOpenAiIngress._process_llm_request).parameters)
    assert params == ["self", "body", "call_method", "raw_request"]
    assert list(inspect.signature(ASGIAppReplicaWrapper._set_asgi_app).parameters) == ["self", "app"]
    source = inspect.getsource(RayOpenAiIngress.chat) + inspect.getsource(RayOpenAiIngress.completions)
    assert source.count("_process_llm_request") == 2
    mro = app.OpenAiIngress.__mro__
    assert mro.index(IngressExtensions) < mro.index(RayOpenAiIngress)


def test_build_app_hands_the_ingress_its_options() -> None:
    options = ingress_options(
        name="tiny",
        model_identity="abc",
        response_cache=cache_args(),
        api_keys_env=API_KEYS_ENV,
        max_replicas=1,
    )
    parsed = IngressOptions.model_validate(options["llmdeploy"])
    assert parsed.api_keys_env == API_KEYS_ENV
    assert not parsed.shared_memory
    shared = ingress_options(
        name="tiny", model_identity="abc", response_cache=cache_args(), api_keys_env=None, max_replicas=3
    )
    assert shared["llmdeploy"]["shared_memory"] is True


def test_redis_without_a_url_is_refused_with_what_to_set() -> None:
    options = IngressOptions(
        name="tiny",
        model_identity="abc",
        response_cache=cache_args(backend=ResponseCacheBackend.REDIS, redis_url_env=REDIS_URL_ENV),
    )
    with pytest.raises(CacheConfigError, match="redisUrlSecret"):
        build_backend(options, environ={})
    with pytest.raises(CacheConfigError, match=REDIS_URL_ENV) as refused:
        build_backend(options, environ={REDIS_URL_ENV: "http://user:hunter2@redis:6379/0"})
    assert "hunter2" not in str(refused.value)


def test_cache_control_no_cache_bypasses() -> None:
    assert bypass_requested("no-cache")
    assert bypass_requested("max-age=0, No-Store")
    assert not bypass_requested("max-age=60")
    assert not bypass_requested(None)


def test_request_dict_reads_one_shot_message_parts_without_losing_them() -> None:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    body = ChatCompletionRequest(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = request_dict(body)
    second = request_dict(body)
    assert first == second
    assert first["messages"][0]["content"] == [{"type": "text", "text": "hi"}]
    assert include_usage(first)


def test_a_stream_is_stored_even_when_the_client_leaves_right_after_its_last_event() -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from llmdeploy.serving.cache.backends import MemoryBackend
    from llmdeploy.serving.cache.key import Endpoint
    from llmdeploy.serving.cache.service import ResponseCache

    from .test_response_cache_sse import chat_stream

    async def engine() -> AsyncIterator[str]:
        for packet in chat_stream():
            yield packet

    async def scenario() -> bytes | None:
        ingress = IngressExtensions.__new__(IngressExtensions)
        ingress._llmdeploy_tasks = set()
        cache = ResponseCache(MemoryBackend(max_entries=10), ttl_s=60)
        tee = ingress._tee(cache, Endpoint.CHAT, "key", engine())
        async for packet in tee:
            if "[DONE]" in packet:
                break
        # The client has its last event and leaves: Ray closes the generator at that yield.
        await tee.aclose()
        await asyncio.gather(*ingress._llmdeploy_tasks)
        return (await cache.get("key")).value

    stored = asyncio.run(scenario())
    assert stored is not None
    assert json.loads(stored)["choices"][0]["message"]["content"] == "Hello"
