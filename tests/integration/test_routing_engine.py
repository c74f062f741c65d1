"""Prefix-aware routing on the real stack: two vLLM CPU replicas behind `PrefixAwareRouter`.

Each response reports `usage.prompt_tokens_details.cached_tokens`, vLLM's own count of prompt
tokens it found in that replica's prefix cache. With two replicas, a router that ignores
prefixes sends a repeat to the other replica half of the time (cached_tokens 0 there); the
prefix-aware router must send every repeat to the replica that already holds its system prompt.

Slow (two engines start, about two minutes): deselect with `-m "not engine"`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

import openai

from llmdeploy.serving.app import resolve_model_source
from llmdeploy.serving.config import APPLICATION_NAME
from llmdeploy.serving.routing.prompt import PromptTokenizer
from llmdeploy.testing.local_stack import LocalStack, local_stack, metric_by_label, scrape, serving_args_from_manifest

pytestmark = pytest.mark.engine

MANIFEST = """
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {name: tiny-routing}
spec:
  model: {source: "builtin://tiny", name: tiny, maxModelLen: 1024}
  accelerator: {type: cpu, kvCacheMemoryMiB: 64}
  replicas: 2
  routing: {prefixAware: true, maxLoadRatio: 1.5}
"""
ENGINE_DEPLOYMENT = "LLMServer:tiny-routing"
# vLLM's CPU block size: a repeat can hit only whole blocks of the shared prefix.
BLOCK = 128
PREFIXES = 4
REPEATS = 3
METRICS_TIMEOUT_S = 60.0

WORDS = [
    "replica",
    "cache",
    "prefix",
    "token",
    "block",
    "router",
    "engine",
    "queue",
    "model",
    "serve",
    "batch",
    "kernel",
    "tensor",
]


def system_prompt(seed: int) -> str:
    rng = random.Random(seed)
    return f"Tenant {seed} instructions: " + " ".join(rng.choice(WORDS) for _ in range(400))


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    args = serving_args_from_manifest(MANIFEST)
    assert args.router.prefix_aware and args.router.block_size == BLOCK
    with local_stack(args, num_cpus=8) as served:
        yield served


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.openai_url, api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, system: str, question: str) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens) of one chat completion."""
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=2,
    )
    assert chat.usage is not None
    details = chat.usage.prompt_tokens_details
    assert details is not None, "vLLM reports cached tokens (enable_prompt_tokens_details)"
    return chat.usage.prompt_tokens, details.cached_tokens or 0


def test_the_router_tokenizes_prompts_as_vllm_does(stack: LocalStack, client: openai.OpenAI) -> None:
    tokenizer = PromptTokenizer.load(resolve_model_source("builtin://tiny").location)
    messages = [{"role": "system", "content": system_prompt(7)}, {"role": "user", "content": "count me"}]

    prompt_tokens, _ = ask(client, messages[0]["content"], messages[1]["content"])

    assert tokenizer.exact
    assert len(tokenizer.tokens({"messages": messages}) or []) == prompt_tokens


def test_repeats_land_on_the_replica_that_holds_their_prefix(stack: LocalStack, client: openai.OpenAI) -> None:
    systems = [system_prompt(seed) for seed in range(PREFIXES)]
    for system in systems:
        prompt_tokens, _ = ask(client, system, "first question")
        assert prompt_tokens >= 3 * BLOCK, "the shared prefix spans whole blocks"

    cached = [ask(client, system, f"question {i}")[1] for i in range(REPEATS) for system in systems]

    # Ignoring prefixes, each repeat would miss with probability 1/2 (all 12 hit: p = 1/4096).
    assert all(tokens >= 2 * BLOCK for tokens in cached), cached


def test_router_metrics_count_affinity_decisions(stack: LocalStack, client: openai.OpenAI) -> None:
    system = system_prompt(100)
    for i in range(3):
        ask(client, system, f"metrics {i}")

    deadline = time.monotonic() + METRICS_TIMEOUT_S
    outcomes: dict[str, float] = {}
    while time.monotonic() < deadline:
        outcomes = metric_by_label(scrape(stack.metrics_url), "ray_llmdeploy_router_decisions_total", "outcome")
        if outcomes.get("affinity", 0) >= 2:
            break
        time.sleep(2)
    assert outcomes.get("affinity", 0) >= 2, outcomes
    samples = scrape(stack.metrics_url)
    assert any(s.startswith("ray_llmdeploy_router_index_blocks") and v > 0 for s, v in samples.items())
    assert any(s.startswith("ray_llmdeploy_router_decision_seconds_bucket") for s in samples)
    assert any(s.startswith("ray_llmdeploy_router_matched_prefix_tokens_bucket") for s in samples)


def test_a_hot_prefix_spreads_over_both_replicas(stack: LocalStack, client: openai.OpenAI) -> None:
    system = system_prompt(200)
    ask(client, system, "warm up")

    def long_request(i: int) -> tuple[int, int]:
        chat = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"hot {i}"}],
            max_tokens=64,
            extra_body={"ignore_eos": True},
        )
        assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
        return chat.usage.prompt_tokens, chat.usage.prompt_tokens_details.cached_tokens or 0

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(long_request, range(24)))

    # Under load the bound moves work to the other replica, which then caches the prefix too.
    assert len(results) == 24
    outcomes = metric_by_label(scrape(stack.metrics_url), "ray_llmdeploy_router_decisions_total", "outcome")
    assert outcomes.get("fallback", 0) >= 1, outcomes


def test_routing_survives_a_replica_restart(stack: LocalStack, client: openai.OpenAI) -> None:
    import ray
    from ray import serve
    from ray.serve._private.common import ReplicaState

    system = system_prompt(300)
    ask(client, system, "before")
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "tiny-routing" in a["name"] and a["name"].startswith("SERVE_REPLICA")
    ]
    assert len(replicas) == 2, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)

    # Requests keep being answered while Serve replaces the replica; the router forgets it.
    for i in range(6):
        prompt_tokens, _ = ask(client, system, f"after {i}")
        assert prompt_tokens > 0

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        engine = serve.status().applications[APPLICATION_NAME].deployments[ENGINE_DEPLOYMENT]
        if engine.replica_states.get(ReplicaState.RUNNING, 0) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the killed replica was not replaced: {engine.replica_states}")
    assert ask(client, system, "replaced")[1] >= 0
