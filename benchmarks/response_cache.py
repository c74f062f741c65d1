"""Response cache: cached vs uncached latency through the real ingress, and what a miss costs.

One local Ray instance serves `builtin://tiny` (examples/tiny-cpu.yaml, rendered by the
operator's own functions) three times, one after another, each a fresh `serve.run` of
`build_app`:

  off     responseCache.enabled: false (the baseline: the ingress without the cache), served
          first and again last, so that drift over the run shows
  memory  the in-process memory backend (one ingress replica)
  redis   the Redis backend, against a redis-server this script starts on a free port

Against `memory` and `redis`, three kinds of requests are sent interleaved (one at a time, closed
loop, in a seeded random order each round), so that the three see the same machine state:

  hit     the same deterministic chat request again and again (answered from the cache)
  miss    a new deterministic prompt each time (looked up, not found, forwarded, stored)
  bypass  a new prompt with `Cache-Control: no-cache` (forwarded without a lookup or store)

and `off` gets the `miss` prompts. Every request is a non-streaming chat completion, temperature
0, `max_tokens` 4. The overhead of a miss is `miss - bypass` (same deployment, interleaved: the
cleanest difference; a bypass skips the lookup and the store, all the cache adds), with a
bootstrap 95% interval of the difference of medians, and `miss - off` (other deployments served
at other times: noisier). A second part times the
cache's own work on a miss in-process, without the HTTP stack: key derivation from a real
`ChatCompletionRequest`, the backend lookup and the store, per backend (memory, and Redis over
TCP to the local server), microseconds per request.

    .venv/bin/python benchmarks/response_cache.py               # ~8 minutes on 2 cores
    .venv/bin/python benchmarks/response_cache.py --requests 30 # quick check

Run it alone: it starts Ray and vLLM, and other engines on the machine distort its timings.
Writes benchmarks/results/response_cache.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, write

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny-cpu.yaml"
MODEL = "tiny"
MAX_TOKENS = 4
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
API_KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": statistics.median(samples_ms),
        "p99_ms": quantile(samples_ms, 0.99),
        "mean_ms": statistics.fmean(samples_ms),
    }


def serving_args(backend: str | None, tmp: Path) -> Any:
    """examples/tiny-cpu.yaml with the cache off, or on with `backend`, rendered as the operator does."""
    from llmdeploy.operator.manifest import load_manifests
    from llmdeploy.operator.render import Owner, render_rayservice
    from llmdeploy.serving.config import ServingArgs

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["routing"] = {"prefixAware": False}
    if backend is not None:
        doc["spec"]["responseCache"] = {"enabled": True, "backend": backend, "maxEntries": 100_000}
        if backend == "redis":
            doc["spec"]["responseCache"]["redisUrlSecret"] = {"name": "bench-redis", "key": "url"}
    manifest = tmp / f"tiny-{backend or 'off'}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    ((obj, _),) = load_manifests(str(manifest))
    rendered = render_rayservice(Owner(obj.metadata.name, "default"), obj.spec, served_model_name=obj.served_model_name)
    (application,) = yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"]
    return ServingArgs.model_validate(application["args"])


def chat_body(prompt: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }


def timed_post(http: Any, body: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    response = http.post("/v1/chat/completions", json=body, headers=dict(headers))
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"request failed: {response.status_code} {response.text[:200]}")
    return elapsed_ms, response.headers.get("x-llmdeploy-cache", "off")


def run_kinds(
    http: Any,
    kinds: Mapping[str, Callable[[int], tuple[dict[str, Any], dict[str, str]]]],
    requests: int,
    warmup: int,
    rng: random.Random,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Each round sends one request of every kind, in random order; summaries and raw samples."""
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    headers_seen: dict[str, dict[str, int]] = {name: {} for name in kinds}
    for i in range(warmup + requests):
        order = list(kinds.items())
        rng.shuffle(order)
        for name, make in order:
            body, headers = make(i)
            elapsed_ms, cache = timed_post(http, body, headers)
            if i >= warmup:
                samples[name].append(elapsed_ms)
                headers_seen[name][cache] = headers_seen[name].get(cache, 0) + 1
    return {name: {**summary(samples[name]), "x-llmdeploy-cache": headers_seen[name]} for name in kinds}, samples


def median_difference_ci(
    a: Sequence[float], b: Sequence[float], rng: random.Random, resamples: int = 2000
) -> tuple[float, float, float]:
    """median(a) - median(b) with a bootstrap 95% interval."""
    diffs = sorted(
        statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
        for _ in range(resamples)
    )
    return statistics.median(a) - statistics.median(b), quantile(diffs, 0.025), quantile(diffs, 0.975)


def end_to_end(
    requests: int, warmup: int, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import httpx
    import ray
    from ray import serve

    from llmdeploy.serving import app, tinymodel
    from llmdeploy.serving.config import APPLICATION_NAME, REDIS_URL_ENV
    from llmdeploy.testing.redis_server import RedisServer

    rows: list[dict[str, Any]] = []
    overheads: list[dict[str, Any]] = []
    rng = random.Random(20261126)
    with tempfile.TemporaryDirectory(prefix="response-cache-bench-") as tmpdir, RedisServer() as redis:
        tmp = Path(tmpdir)
        for key, value in ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        os.environ[REDIS_URL_ENV] = redis.url
        tinymodel.ensure_tiny_model("tiny")
        http_port = free_port()
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
            auth = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as http:
                for phase, backend in enumerate((None, "memory", "redis", None)):
                    label = backend or ("off" if phase == 0 else "off (again)")
                    started = time.monotonic()
                    serve.run(
                        app.build_app(serving_args(backend, tmp).model_dump(mode="json")),
                        name=APPLICATION_NAME,
                        route_prefix="/",
                    )
                    log(f"{label}: serving after {time.monotonic() - started:.0f} s; measuring")
                    tag = f"{label}-{time.monotonic_ns()}"

                    def miss(i: int, tag: str = tag) -> tuple[dict[str, Any], dict[str, str]]:
                        return chat_body(f"Request {tag} {i:05d}: say something."), auth

                    def bypass(i: int, tag: str = tag) -> tuple[dict[str, Any], dict[str, str]]:
                        return chat_body(f"Bypass {tag} {i:05d}: say something."), {**auth, "Cache-Control": "no-cache"}

                    def hit(i: int) -> tuple[dict[str, Any], dict[str, str]]:
                        return chat_body("The same question every time: say something."), auth

                    kinds = {"miss": miss} if backend is None else {"hit": hit, "miss": miss, "bypass": bypass}
                    measured, samples = run_kinds(http, kinds, requests, warmup, rng)
                    if backend is not None:
                        diff, low, high = median_difference_ci(samples["miss"], samples["bypass"], rng)
                        overhead = {"miss_minus_bypass_p50_ms": diff, "ci95_low_ms": low, "ci95_high_ms": high}
                        overheads.append({"backend": label, **overhead})
                    for kind, stats in measured.items():
                        rows.append({"backend": label, "request": kind if backend else "uncached", **stats})
                        log(f"  {label} {kind}: p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms")
                    serve.delete(APPLICATION_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows, overheads


def in_process(iterations: int) -> list[dict[str, Any]]:
    """The cache's own work on a miss: key, lookup, store (µs), per backend, without HTTP."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from llmdeploy.serving.cache.backends import MemoryBackend, RedisBackend
    from llmdeploy.serving.cache.key import Endpoint, cache_key, cacheability, tenant_scope
    from llmdeploy.serving.cache.service import ResponseCache
    from llmdeploy.serving.ingress import request_dict
    from llmdeploy.testing.redis_server import RedisServer

    stored = json.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60},
        }
    ).encode()

    async def measure(cache: ResponseCache) -> dict[str, list[float]]:
        parts: dict[str, list[float]] = {"key_us": [], "lookup_us": [], "store_us": []}
        scope = tenant_scope(tenant="team-a", api_key=API_KEY)
        for i in range(iterations):
            body = ChatCompletionRequest(**chat_body(f"In-process request {i:06d}: say something."))
            t0 = time.perf_counter()
            request = request_dict(body)
            cacheability(request, cache_nondeterministic=False)
            key = cache_key(model_identity="0" * 16, scope=scope, endpoint=Endpoint.CHAT, request=request)
            t1 = time.perf_counter()
            lookup = await cache.get(key)
            t2 = time.perf_counter()
            assert lookup.value is None and lookup.available
            await cache.put(key, stored)
            t3 = time.perf_counter()
            parts["key_us"].append((t1 - t0) * 1e6)
            parts["lookup_us"].append((t2 - t1) * 1e6)
            parts["store_us"].append((t3 - t2) * 1e6)
        return parts

    rows: list[dict[str, Any]] = []
    with RedisServer() as redis:
        for label in ("memory", "redis"):
            backend: Any = (
                MemoryBackend(max_entries=100_000)
                if label == "memory"
                else RedisBackend(redis.url, namespace="bench", max_entries=100_000)
            )
            cache = ResponseCache(backend, ttl_s=3600)
            parts = asyncio.run(measure(cache))
            asyncio.run(cache.close())
            row: dict[str, Any] = {"backend": label, "n": iterations}
            for part, values in parts.items():
                row[part.replace("_us", "_p50_us")] = statistics.median(values)
                row[part.replace("_us", "_p99_us")] = quantile(values, 0.99)
            row["miss_path_p50_us"] = row["key_p50_us"] + row["lookup_p50_us"]
            rows.append(row)
    return rows


def derived(rows: Sequence[Mapping[str, Any]], overheads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Hits and misses against the uncached baseline (the better of the two `off` phases)."""
    by = {(r["backend"], r["request"]): r for r in rows}
    offs = [r for r in rows if r["request"] == "uncached"]
    if not offs:
        return []
    off_p50 = min(r["p50_ms"] for r in offs)
    off_p99 = min(r["p99_ms"] for r in offs)
    ci = {o["backend"]: o for o in overheads}
    out: list[dict[str, Any]] = []
    for backend in ("memory", "redis"):
        hit, miss = by.get((backend, "hit")), by.get((backend, "miss"))
        if not (hit and miss and backend in ci):
            continue
        out.append(
            {
                "backend": backend,
                "hit_p50_speedup_vs_off": off_p50 / hit["p50_ms"],
                "hit_p99_speedup_vs_off": off_p99 / hit["p99_ms"],
                "miss_minus_bypass_p50_ms": ci[backend]["miss_minus_bypass_p50_ms"],
                "ci95_ms": f"[{ci[backend]['ci95_low_ms']:.2f}, {ci[backend]['ci95_high_ms']:.2f}]",
                "miss_minus_off_p50_ms": miss["p50_ms"] - off_p50,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="Measured requests per kind and backend.")
    parser.add_argument("--warmup", type=int, default=10, help="Requests per kind not counted.")
    parser.add_argument("--iterations", type=int, default=2000, help="In-process misses per backend.")
    parser.add_argument("--out", default="response_cache", help="Result name under benchmarks/results/.")
    options = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    micro = in_process(options.iterations)
    rows, overheads = end_to_end(options.requests, options.warmup, log)
    ratios = derived(rows, overheads)
    print("\nThrough the ingress (sequential, non-streaming chat, max_tokens 4), ms:")
    print(table(rows, ["backend", "request", "n", "p50_ms", "p99_ms", "mean_ms"]))
    print("\nHits against the uncached baseline, and what a miss adds:")
    print(
        table(
            ratios,
            [
                "backend",
                "hit_p50_speedup_vs_off",
                "hit_p99_speedup_vs_off",
                "miss_minus_bypass_p50_ms",
                "ci95_ms",
                "miss_minus_off_p50_ms",
            ],
        )
    )
    print("\nThe cache's own work on a miss, in-process (µs):")
    print(
        table(
            micro,
            ["backend", "n", "key_p50_us", "lookup_p50_us", "lookup_p99_us", "store_p50_us", "miss_path_p50_us"],
        )
    )
    path = write(
        options.out,
        {
            "benchmark": "response_cache",
            "command": "benchmarks/response_cache.py " + " ".join(sys.argv[1:]),
            "config": {
                "model": "builtin://tiny",
                "manifest": str(EXAMPLE.relative_to(REPO)),
                "max_tokens": MAX_TOKENS,
                "requests_per_kind": options.requests,
                "warmup_per_kind": options.warmup,
                "in_process_iterations": options.iterations,
                "concurrency": 1,
            },
            "through_ingress": rows,
            "derived": ratios,
            "miss_overhead": overheads,
            "in_process": micro,
            "duration_s": round(time.monotonic() - started, 1),
        },
    )
    print(f"\nwrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
