"""What the project adds to Ray Serve LLM's OpenAI ingress: the response cache and API keys.

`IngressExtensions` is mixed into the ingress class (`llmdeploy.serving.app:OpenAiIngress`,
ahead of Ray's `OpenAiIngress`) and overrides two methods:

- `_process_llm_request`, the one method through which Ray's `chat` and `completions` send a
  request to the engine and turn its answer into a `JSONResponse` or an SSE `StreamingResponse`.
  Around it: derive the cache key, look up, answer a hit (the stored body, or its SSE replay for
  a streaming request) without calling the engine, and on a miss pass the engine's response
  through while storing it once it is known to be complete. Every response carries
  `x-llmdeploy-cache: hit | miss | bypass`.
- `_set_asgi_app`, through which Ray Serve's ASGI wrapper installs the FastAPI application in the
  replica: `HTTPLimits` (`llmdeploy.serving.http_limits`: 413 for oversized bodies, Retry-After
  on shed answers) joins the application's own middleware, and with API keys on the application
  is wrapped in `ApiKeyMiddleware`, outermost, so every route (models included) needs a key and
  an unauthenticated body is never read.

Both are Ray-internal names (Ray 2.60); `test_ingress_extension_points` fails when an upgrade
moves them. The options reach the ingress as `ingress_extra_kwargs` (`IngressOptions`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response, StreamingResponse

from llmdeploy.serving.auth import ApiKeyMiddleware, ApiKeys, bearer_token
from llmdeploy.serving.cache import key as cache_key
from llmdeploy.serving.cache import sse
from llmdeploy.serving.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from llmdeploy.serving.cache.key import Endpoint
from llmdeploy.serving.cache.service import ResponseCache, Result
from llmdeploy.serving.config import ResponseCacheArgs, ResponseCacheBackend, engine_deployment_name
from llmdeploy.serving.http_limits import HTTPLimits

CACHE_HEADER: Final = "x-llmdeploy-cache"
# Ray's call methods (CallMethod values) of the endpoints whose answers are cached.
ENDPOINTS: Final = {"chat": Endpoint.CHAT, "completions": Endpoint.COMPLETIONS}
# Request `Cache-Control` directives that skip the cache (neither read nor stored).
BYPASS_DIRECTIVES: Final = frozenset({"no-cache", "no-store"})

_logger = logging.getLogger("ray.serve")


class IngressOptions(BaseModel):
    """The ingress's own arguments (`ingress_extra_kwargs["llmdeploy"]`), rendered by `build_app`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The LLMDeployment's name: the Redis namespace and the shared actor's name.")
    model_identity: str = Field(description="Hash of what decides outputs: part of every cache key.")
    response_cache: ResponseCacheArgs
    api_keys_env: str | None = Field(default=None, description="Env var holding the API keys; None: no auth.")
    shared_memory: bool = Field(
        default=False, description="Several ingress replicas: the memory backend lives in one shared actor."
    )


class RayCacheMetrics:
    """The cache's metrics through Ray (exported as `ray_llmdeploy_response_cache_*`).

    Labelled `deployment` with the engine deployment's name (`LLMServer:<name>`), as the
    router's and the engine's own series are, so one dashboard selector picks an
    LLMDeployment's series whichever Serve deployment exports them.
    """

    def __init__(self, deployment: str) -> None:
        from ray.util import metrics

        tags = {"deployment": deployment}
        self._requests = metrics.Counter(
            "llmdeploy_response_cache_requests",
            description="Cacheable-endpoint requests by cache result (hit, miss, bypass).",
            tag_keys=("deployment", "result"),
        ).set_default_tags(tags)
        self._evictions = metrics.Counter(
            "llmdeploy_response_cache_evictions",
            description="Entries evicted to stay within responseCache.maxEntries.",
            tag_keys=("deployment",),
        ).set_default_tags(tags)
        self._tokens_saved = metrics.Counter(
            "llmdeploy_response_cache_tokens_saved",
            description="Completion tokens answered from the cache instead of generated.",
            tag_keys=("deployment",),
        ).set_default_tags(tags)
        self._backend_up = metrics.Gauge(
            "llmdeploy_response_cache_backend_up",
            description="1 while the cache backend answers, 0 while requests are served uncached.",
            tag_keys=("deployment",),
        ).set_default_tags(tags)
        self._backend_errors = metrics.Counter(
            "llmdeploy_response_cache_backend_errors",
            description="Cache backend calls that failed (the request was served uncached).",
            tag_keys=("deployment",),
        ).set_default_tags(tags)

    def request(self, result: Result) -> None:
        self._requests.inc(1, tags={"result": result.value})

    def evicted(self, count: int) -> None:
        self._evictions.inc(count)

    def tokens_saved(self, count: int) -> None:
        if count > 0:
            self._tokens_saved.inc(count)

    def backend_up(self, up: bool) -> None:
        self._backend_up.set(1 if up else 0)

    def backend_error(self) -> None:
        self._backend_errors.inc(1)


class CacheConfigError(ValueError):
    """The cache's configuration cannot work (for example, no Redis URL); one line saying what to set."""


def build_backend(options: IngressOptions, environ: dict[str, str] | None = None) -> CacheBackend:
    args = options.response_cache
    if args.backend is ResponseCacheBackend.REDIS:
        env = dict(os.environ) if environ is None else environ
        url = env.get(args.redis_url_env or "")
        if not url:
            raise CacheConfigError(
                f"responseCache.backend is redis but ${args.redis_url_env} is empty; "
                "set responseCache.redisUrlSecret to a Secret key holding the Redis URL"
            )
        try:
            return RedisBackend(url, namespace=options.name, max_entries=args.max_entries)
        except ValueError:
            # The message may quote the URL, which may hold a password: name the variable instead.
            raise CacheConfigError(
                f"${args.redis_url_env} is not a Redis URL; expected redis://[user:password@]host:port/db"
            ) from None
    if options.shared_memory:
        from llmdeploy.serving.cache.shared import SharedMemoryBackend

        return SharedMemoryBackend(deployment=options.name, max_entries=args.max_entries)
    return MemoryBackend(max_entries=args.max_entries)


def request_dict(body: Any) -> dict[str, Any]:
    """The request as plain JSON data (the key's input).

    Message `content` and `tool_calls` may be one-shot pydantic iterators (see Ray's
    `_sanitize_chat_completion_request`); they are made lists first, as Ray does before
    forwarding, so dumping them here does not consume what the engine needs.
    """
    for message in getattr(body, "messages", None) or []:
        if isinstance(message, dict):
            for field in ("content", "tool_calls"):
                value = message.get(field)
                if value is not None and not isinstance(value, str | list | dict):
                    message[field] = list(value)
    data: dict[str, Any] = body.model_dump(mode="json")
    return data


def bypass_requested(cache_control: str | None) -> bool:
    if not cache_control:
        return False
    return any(part.strip().lower() in BYPASS_DIRECTIVES for part in cache_control.split(","))


def include_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class IngressExtensions:
    """Mixed in ahead of Ray's `OpenAiIngress` (see the module docstring)."""

    def __init__(self, *args: Any, llmdeploy: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = IngressOptions.model_validate(llmdeploy) if llmdeploy is not None else None
        self._llmdeploy_options = options
        self._llmdeploy_keys = (
            ApiKeys.from_env(options.api_keys_env) if options is not None and options.api_keys_env else None
        )
        self._llmdeploy_cache: ResponseCache | None = None
        self._llmdeploy_tasks: set[asyncio.Task[Any]] = set()
        if options is not None and options.response_cache.enabled:
            self._llmdeploy_cache = ResponseCache(
                build_backend(options),
                ttl_s=options.response_cache.ttl_s,
                metrics=RayCacheMetrics(engine_deployment_name(options.name)),
                name=f"response cache ({options.response_cache.backend.value})",
            )
            self._background(self._llmdeploy_cache.check())

    def _set_asgi_app(self, app: Any) -> None:
        if hasattr(app, "add_middleware"):
            # Inside the FastAPI app, so Ray Serve still reads the app's routes for its metrics.
            app.add_middleware(HTTPLimits)
        if self._llmdeploy_keys is not None:
            app = ApiKeyMiddleware(app, self._llmdeploy_keys)
        super()._set_asgi_app(app)  # type: ignore[misc]

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._llmdeploy_tasks.add(task)
        task.add_done_callback(self._llmdeploy_tasks.discard)

    def _cache_key(self, body: Any, endpoint: Endpoint, raw_request: Any) -> tuple[str | None, dict[str, Any]]:
        """(key, request as data); the key is None when this request must not use the cache."""
        options = self._llmdeploy_options
        assert options is not None
        headers = raw_request.headers if raw_request is not None else {}
        if bypass_requested(headers.get("cache-control")):
            return None, {}
        try:
            request = request_dict(body)
        except Exception as err:  # a request the key cannot describe is served uncached
            _logger.info("response cache: request not keyable (%s); serving uncached", type(err).__name__)
            return None, {}
        verdict = cache_key.cacheability(request, cache_nondeterministic=options.response_cache.cache_nondeterministic)
        if verdict is not cache_key.Cacheability.CACHEABLE:
            return None, request
        scope = cache_key.tenant_scope(
            tenant=headers.get(options.response_cache.tenant_header),
            api_key=bearer_token(headers.get("authorization")),
        )
        key = cache_key.cache_key(
            model_identity=options.model_identity, scope=scope, endpoint=endpoint, request=request
        )
        return key, request

    async def _process_llm_request(self, body: Any, call_method: str, raw_request: Any = None) -> Response:
        cache = self._llmdeploy_cache
        endpoint = ENDPOINTS.get(call_method)
        forward = super()._process_llm_request  # type: ignore[misc]
        if cache is None or endpoint is None:
            response: Response = await forward(body, call_method, raw_request)
            return response
        key, request = self._cache_key(body, endpoint, raw_request)
        lookup = await cache.get(key) if key is not None else None
        if key is not None and lookup is not None and lookup.value is not None:
            try:
                return self._hit(cache, endpoint, lookup.value, request)
            except (ValueError, TypeError) as err:  # an unreadable entry is a miss, never a failure
                _logger.info("response cache: unreadable entry (%s); asking the engine", type(err).__name__)
        result = Result.MISS if key is not None and lookup is not None and lookup.available else Result.BYPASS
        cache.metrics.request(result)
        response = await forward(body, call_method, raw_request)
        response.headers[CACHE_HEADER] = result.value
        if result is Result.MISS and key is not None and response.status_code == 200:
            self._store_when_complete(cache, endpoint, key, response)
        return response

    def _hit(self, cache: ResponseCache, endpoint: Endpoint, value: bytes, request: dict[str, Any]) -> Response:
        stored = json.loads(value)
        if not isinstance(stored, dict):
            raise TypeError("entry is not a JSON object")
        headers = {CACHE_HEADER: Result.HIT.value}
        if request.get("stream"):
            packets = sse.replay(endpoint, stored, include_usage=include_usage(request))
            response: Response = StreamingResponse(iter(packets), media_type="text/event-stream", headers=headers)
        else:
            response = Response(content=value, media_type="application/json", headers=headers)
        cache.metrics.request(Result.HIT)
        cache.metrics.tokens_saved(sse.completion_tokens(stored))
        return response

    def _store_when_complete(self, cache: ResponseCache, endpoint: Endpoint, key: str, response: Response) -> None:
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._tee(cache, endpoint, key, response.body_iterator)
        elif isinstance(response, JSONResponse):
            self._background(_store_body(cache, key, bytes(response.body)))

    async def _tee(
        self, cache: ResponseCache, endpoint: Endpoint, key: str, stream: AsyncIterable[Any]
    ) -> AsyncIterator[Any]:
        """Pass the stream through, and store what it amounts to once its last event has come.

        The store starts before the terminal `data: [DONE]` is handed on: a client that has it
        may close the connection at once, and Ray then cancels this generator before it would
        resume after its last yield.
        """
        packets: list[str] = []
        async for packet in stream:
            text = packet if isinstance(packet, str) else bytes(packet).decode()
            packets.append(text)
            if sse.sse_events([text])[-1:] == [sse.DONE]:
                self._background(_store_stream(cache, endpoint, key, tuple(packets)))
            yield packet


async def _store_body(cache: ResponseCache, key: str, body: bytes) -> None:
    try:
        response = json.loads(body)
    except ValueError:
        return
    if isinstance(response, dict) and sse.is_complete(response):
        await cache.put(key, body)


async def _store_stream(cache: ResponseCache, endpoint: Endpoint, key: str, packets: Iterable[str]) -> None:
    response = sse.assemble(endpoint, packets)
    if response is not None:
        await cache.put(key, json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode())


def ingress_options(
    *, name: str, model_identity: str, response_cache: ResponseCacheArgs, api_keys_env: str | None, max_replicas: int
) -> dict[str, Any]:
    """`ingress_extra_kwargs` of the ingress (JSON data: Ray passes it through the serve config). Pure."""
    options = IngressOptions(
        name=name,
        model_identity=model_identity,
        response_cache=response_cache,
        api_keys_env=api_keys_env,
        shared_memory=max_replicas > 1,
    )
    return {"llmdeploy": options.model_dump(mode="json")}
