"""Prefix-aware routing on the real stack: power-of-two vs Ray's PrefixCacheAffinityRouter vs ours.

Two vLLM CPU replicas of `builtin://gpu-regime` under Ray Serve, each with a KV cache that
holds only part of the shared prefixes (so where a request lands decides whether its prefix
is cached), serve a shared-prefix trace in the shape of vLLM's own `prefix_repetition`
benchmark dataset: `--prefixes` prefixes of `--prefix-tokens` tokens, each request one of them
(seeded choice) plus a unique suffix, fixed-length output, streamed (for TTFT).

Each policy gets its own fresh stack (one at a time) and exactly the same requests:

  power-of-two   Ray Serve's default router (`routing.prefixAware: false`)
  ray-prefix     Ray Serve LLM's `PrefixCacheAffinityRouter` with its default kwargs
  llmdeploy      `PrefixAwareRouter` (`routing.prefixAware: true`, the default)

Reported per policy: vLLM's own prefix-cache hit rate per replica and overall
(`prefix_cache_hits / prefix_cache_queries`, in tokens, from each replica's
`ray_vllm_prefix_cache_*` counters, label `ReplicaId`), requests per replica, TTFT p50/p99,
end-to-end p50/p99 and output tokens/s; and the trace's reuse ceiling (every whole block of
a prefix seen before is a hit: one infinite cache).

    .venv/bin/python benchmarks/routing_engine.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/routing_engine.py --requests 24 --policies llmdeploy   # quick

Writes benchmarks/results/routing_engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
import results

from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.config import ServingArgs
from llmdeploy.testing.local_stack import local_stack, metric_by_label, scrape, serving_args_from_manifest

POLICIES = ("power-of-two", "ray-prefix", "llmdeploy")
RAY_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
MODEL = "gpu-regime"
BLOCK = 128  # vLLM's CPU block size


def manifest(prefix_aware: bool, kv_mib: int) -> str:
    return f"""
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {{name: routing-bench}}
spec:
  model: {{source: "builtin://{MODEL}", name: {MODEL}, maxModelLen: 1024}}
  accelerator: {{type: cpu, kvCacheMemoryMiB: {kv_mib}}}
  batching: {{maxNumSeqs: 4, maxNumBatchedTokens: 1024}}
  replicas: 2
  routing: {{prefixAware: {str(prefix_aware).lower()}}}
"""


def ray_router_application(args: ServingArgs) -> Any:
    """Our application with Ray Serve LLM's prefix router in place of ours (the baseline)."""
    from ray.serve.llm import LLMConfig, build_openai_app

    model, draft = app.resolve_sources(args)
    kwargs = app.llm_config_kwargs(args, model=model, draft=draft)
    kwargs["deployment_config"]["request_router_config"] = {"request_router_class": RAY_ROUTER}
    app_args = app.openai_app_args(args, model=model, draft=draft)
    app_args["llm_configs"] = [LLMConfig(**kwargs)]
    return build_openai_app(app_args)


def make_trace(
    *, prefixes: int, prefix_tokens: int, suffix_tokens: int, requests: int, seed: int, count: Callable[[str], int]
) -> tuple[list[loadgen.RequestSpec], list[int]]:
    """Requests (prompt = one shared prefix + a unique suffix) and each request's prefix index."""
    rng = random.Random(seed)
    heads = [loadgen.make_prompt(rng, f"[prefix {i}]", prefix_tokens, count) for i in range(prefixes)]
    chosen = [rng.randrange(prefixes) for _ in range(requests)]
    trace = [
        loadgen.RequestSpec(
            index=i,
            prompt=heads[p] + " " + loadgen.make_prompt(rng, f"[q{i}]", suffix_tokens, count),
            stream=True,
            max_tokens=16,
        )
        for i, p in enumerate(chosen)
    ]
    return trace, chosen


def ceiling(chosen: Sequence[int], prefix_tokens: int, prompt_tokens: Sequence[int]) -> float:
    """Hit rate with one infinite cache: whole blocks of a prefix already seen, over all prompt tokens."""
    seen: set[int] = set()
    hits = 0
    for p in chosen:
        if p in seen:
            hits += (prefix_tokens // BLOCK) * BLOCK
        seen.add(p)
    return hits / sum(prompt_tokens)


@contextmanager
def stack_for(policy: str, kv_mib: int) -> Iterator[Any]:
    args = serving_args_from_manifest(manifest(policy == "llmdeploy", kv_mib))
    build = ray_router_application if policy == "ray-prefix" else None
    with local_stack(args, num_cpus=8, application=build) as served:
        yield served


def hit_rates(samples: dict[str, float]) -> dict[str, dict[str, float]]:
    hits = metric_by_label(samples, "ray_vllm_prefix_cache_hits_total", "ReplicaId")
    queries = metric_by_label(samples, "ray_vllm_prefix_cache_queries_total", "ReplicaId")
    finished = metric_by_label(samples, "ray_vllm_request_success_total", "ReplicaId")
    return {
        replica: {"hits": hits.get(replica, 0.0), "queries": q, "requests": finished.get(replica, 0.0)}
        for replica, q in queries.items()
        if replica
    }


def run_policy(
    policy: str, trace: list[loadgen.RequestSpec], spec: loadgen.WorkloadSpec, kv_mib: int
) -> dict[str, Any]:
    print(f"\n== {policy}: starting two replicas", flush=True)
    with stack_for(policy, kv_mib) as served:
        # Warm each engine's kernels with a prompt no trace request shares.
        warm = [loadgen.RequestSpec(index=i, prompt=f"[warm {i}] hello", stream=True, max_tokens=4) for i in range(4)]
        asyncio.run(loadgen.run_load(served.openai_url, MODEL, spec, warm, concurrency=2))
        before = hit_rates(scrape(served.metrics_url))
        run = asyncio.run(loadgen.run_load(served.openai_url, MODEL, spec, trace, concurrency=spec.concurrency[0]))
        time.sleep(12)  # Ray exports metrics every few seconds
        after = hit_rates(scrape(served.metrics_url))
    summary = loadgen.summarize(run, expected_output_tokens=16)
    replicas = {}
    for replica, now in after.items():
        was = before.get(replica, {"hits": 0.0, "queries": 0.0, "requests": 0.0})
        delta = {k: now[k] - was[k] for k in now}
        replicas[replica] = {**delta, "hit_rate": delta["hits"] / delta["queries"] if delta["queries"] else 0.0}
    hits = sum(r["hits"] for r in replicas.values())
    queries = sum(r["queries"] for r in replicas.values())
    return {
        "policy": policy,
        "hit_rate": round(hits / queries, 4) if queries else 0.0,
        "replica_hit_rates": sorted(round(r["hit_rate"], 4) for r in replicas.values()),
        "replica_requests": sorted(int(r["requests"]) for r in replicas.values()),
        "ttft_p50_ms": summary["ttft_p50_ms"],
        "ttft_p99_ms": summary["ttft_p99_ms"],
        "e2e_p50_ms": summary["e2e_p50_ms"],
        "e2e_p99_ms": summary["e2e_p99_ms"],
        "output_tok_s": summary["output_tok_s"],
        "errors": summary["errors"],
        "replicas": replicas,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--prefix-tokens", type=int, default=256)
    parser.add_argument("--suffix-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--kv-mib", type=int, default=24, help="KV cache per replica (MiB); default holds about 4 prefixes"
    )
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--out", default="routing_engine")
    options = parser.parse_args(argv)

    # One model build for all the stacks (each stack otherwise caches in its own folder).
    os.environ.setdefault(tinymodel.MODEL_CACHE_ENV, str(tinymodel.default_cache_dir()))
    model_dir = tinymodel.ensure_tiny_model(MODEL)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    trace, chosen = make_trace(
        prefixes=options.prefixes,
        prefix_tokens=options.prefix_tokens,
        suffix_tokens=options.suffix_tokens,
        requests=options.requests,
        seed=options.seed,
        count=count,
    )
    reuse_ceiling = ceiling(chosen, options.prefix_tokens, [count(r.prompt) for r in trace])
    spec = loadgen.WorkloadSpec(
        name="prefix-repetition",
        concurrency=(options.concurrency,),
        requests=options.requests,
        warmup_requests=0,
        prompt_tokens=options.prefix_tokens + options.suffix_tokens,
        output_tokens=16,
        stream_fraction=1.0,
        skip_special_tokens=False,
        request_timeout_s=300,
        phase_timeout_s=1800,
        seed=options.seed,
    )
    rows = [run_policy(policy, trace, spec, options.kv_mib) for policy in options.policies]
    for row in rows:
        row["fraction_of_ceiling"] = round(row["hit_rate"] / reuse_ceiling, 3) if reuse_ceiling else None
    columns = [
        "policy",
        "hit_rate",
        "fraction_of_ceiling",
        "replica_hit_rates",
        "replica_requests",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "output_tok_s",
        "errors",
    ]
    print(f"\nreuse ceiling (one infinite cache): {reuse_ceiling:.3f}")
    print(results.table(rows, columns))
    path = results.write(
        options.out,
        {
            "benchmark": "routing_engine",
            "options": vars(options),
            "reuse_ceiling": round(reuse_ceiling, 4),
            "rows": rows,
        },
    )
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name}")


if __name__ == "__main__":
    main()
