"""The real serving stack under bad requests, overload, client disconnects and a dying engine.

One stack for the module (`builtin://tiny` on the CPU), with small admission limits so that a
burst overflows them. Order matters: the engine is killed last. Checks are on behaviour and counts, never on speed:

- bad requests (malformed JSON, unknown model, negative and huge max_tokens, a prompt over
  maxModelLen, invalid UTF-8, an oversized body, a wrong content type) each get a 4xx with an
  OpenAI error body, and the replica and engine processes are the same ones afterwards;
- a burst beyond max_ongoing + max_queued gets quick 503 (or 429) answers with `Retry-After`
  while the accepted requests complete, and the replicas' memory does not grow from one burst to the next;
- a streaming client that disconnects frees the engine: its running-request count returns to 0
  and the tokens generated stop far short of the request's max_tokens;
- a killed engine process makes Ray report the replica unhealthy and replace it; a request
  meanwhile is answered (an error or a completion) before the client's timeout; then it serves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from llmdeploy.testing.local_stack import (  # noqa: E402
    LocalStack,
    local_stack,
    metric_total,
    scrape,
    serving_args_from_manifest,
)

pytestmark = pytest.mark.engine

MODEL = "tiny"
MAX_MODEL_LEN = 4096
MAX_ONGOING = 2
MAX_QUEUED = 2
# Far more than an engine replica and its queue admit.
BURST = 16
METRICS_TIMEOUT_S = 60.0
# Ray exports engine stats to its metrics endpoint about every 10 s.
METRICS_EXPORT_S = 12.0
MANIFEST = f"""
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {{name: {MODEL}}}
spec:
  model: {{source: "builtin://tiny", maxModelLen: {MAX_MODEL_LEN}}}
  accelerator: {{type: cpu, kvCacheMemoryMiB: 64}}
  batching: {{maxNumSeqs: 4, maxNumBatchedTokens: {MAX_MODEL_LEN}}}
  serving: {{maxOngoingRequests: {MAX_ONGOING}, maxQueuedRequests: {MAX_QUEUED}}}
  replicas: 1
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack(serving_args_from_manifest(MANIFEST)) as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.openai_url, timeout=120) as client:
        yield client


def _serving_pids() -> dict[str, set[int]]:
    """PIDs of the Serve replicas and vLLM engine processes of this test's Ray instance."""
    found: dict[str, set[int]] = {"engine": set(), "LLMServer": set(), "ingress": set()}
    for proc in psutil.Process().children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "EngineCore" in line:
            found["engine"].add(proc.pid)
        elif "ServeReplica" in line and "LLMServer" in line:
            found["LLMServer"].add(proc.pid)
        elif "ServeReplica" in line and "Ingress" in line:
            found["ingress"].add(proc.pid)
    return found


def _rss_mib(pids: dict[str, set[int]]) -> float:
    total = 0
    for pid in set().union(*pids.values()):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def _chat(max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, **extra}


def _assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    error = body.get("error")
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str) and error["message"], body
    return dict(error)


def _serves(http: httpx.Client) -> None:
    response = http.post("/chat/completions", json=_chat())
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "malformed JSON": {"content": b'{"model": "tiny", "messages": [', "headers": {"content-type": "application/json"}},
    "unknown model": {"json": {**_chat(), "model": "no-such-model"}},
    "negative max_tokens": {"json": _chat(max_tokens=-5)},
    "huge max_tokens": {"json": _chat(max_tokens=10**9)},
    "prompt over maxModelLen": {
        "json": {"model": MODEL, "prompt": "word " * (MAX_MODEL_LEN * 2), "max_tokens": 4},
        "path": "/completions",
    },
    "invalid UTF-8": {
        "content": b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe\xfa"}], "max_tokens": 4}',
        "headers": {"content-type": "application/json"},
    },
    "wrong content type": {"content": json.dumps(_chat()).encode(), "headers": {"content-type": "text/plain"}},
    "not an object": {"json": ["a", "list"]},
    "messages missing": {"json": {"model": MODEL, "max_tokens": 4}},
}


def test_bad_requests_get_openai_4xx_and_crash_nothing(stack: LocalStack, http: httpx.Client) -> None:
    _serves(http)
    before = _serving_pids()
    assert before["engine"] and before["LLMServer"] and before["ingress"], before
    answers, wrong = {}, {}
    for what, request in BAD_REQUESTS.items():
        path = request.get("path", "/chat/completions")
        kwargs = {k: v for k, v in request.items() if k != "path"}
        response = http.post(path, **kwargs)
        answers[what] = response.status_code
        try:
            error = _assert_openai_error(response)
        except (AssertionError, ValueError) as exc:
            wrong[what] = f"{response.status_code} {response.text[:200]!r}: {exc}"
            continue
        if what == "unknown model":
            assert "no-such-model" in error["message"]
    print("bad request answers:", answers)
    assert wrong == {}, wrong
    _serves(http)
    assert _serving_pids() == before, "a bad request restarted a replica or an engine"


def test_an_oversized_body_is_refused_and_crashes_nothing(stack: LocalStack, http: httpx.Client) -> None:
    before = _serving_pids()
    # 16 MiB of prompt: far beyond maxModelLen in tokens.
    response = http.post("/completions", json={"model": MODEL, "prompt": "a " * (8 * 2**20), "max_tokens": 1})
    _assert_openai_error(response)
    _serves(http)
    assert _serving_pids() == before


def _burst(http: httpx.Client, n: int) -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        return http.post("/chat/completions", json=_chat(max_tokens=128, ignore_eos=True))

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_burst_beyond_capacity_is_shed_and_the_rest_complete(stack: LocalStack, http: httpx.Client) -> None:
    pids = _serving_pids()
    rss: list[float] = []
    for _ in range(2):
        responses = _burst(http, BURST)
        rss.append(_rss_mib(pids))
        shed = [r for r in responses if r.status_code in (429, 503)]
        done = [r for r in responses if r.status_code == 200]
        assert len(shed) + len(done) == BURST, sorted({r.status_code for r in responses})
        assert shed, "nothing was shed: a burst beyond max_ongoing + max_queued must be answered 503/429"
        assert done, "the accepted requests must complete"
        for response in done:
            assert response.json()["usage"]["completion_tokens"] == 128
        # Ray Serve's proxy sheds before the ingress app runs: its 503 body is Ray's plain text,
        # but it says when to retry (OpenAI clients retry 503s and honour Retry-After).
        assert {r.headers.get("retry-after") for r in shed} == {"1"}, "a shed answer says when to retry"
    assert _serving_pids() == pids
    # Memory after the second burst: within 10% (or 64 MiB) of the first.
    assert rss[1] <= rss[0] * 1.10 + 64, rss


def _running(stack: LocalStack) -> float:
    return metric_total(scrape(stack.metrics_url), "ray_vllm_num_requests_running")


def _generated(stack: LocalStack) -> float:
    return metric_total(scrape(stack.metrics_url), "ray_vllm_generation_tokens_total")


def _quiet_generated(stack: LocalStack) -> float:
    """Generated tokens so far, once nothing runs and Ray has exported the last engine stats."""
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while _running(stack) > 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert _running(stack) == 0, "the engine still runs a request"
    time.sleep(METRICS_EXPORT_S)
    return _generated(stack)


def test_a_dropped_stream_is_aborted_in_the_engine(stack: LocalStack, http: httpx.Client) -> None:
    max_tokens = MAX_MODEL_LEN - 64
    generated_before = _quiet_generated(stack)
    with http.stream(
        "POST", "/chat/completions", json=_chat(max_tokens=max_tokens, ignore_eos=True, stream=True)
    ) as response:
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data:")
            if chunks >= 8:
                break  # leaving the block closes the connection mid-stream
    # Back to no running request, and the work done stops far short of max_tokens.
    generated = _quiet_generated(stack) - generated_before
    assert 8 <= generated < max_tokens / 2, f"{generated} tokens generated for a request dropped after 8 chunks"


def _deployment_status() -> tuple[str, dict[str, int]]:
    from ray import serve

    app = serve.status().applications["llm"]
    (name,) = [d for d in app.deployments if d.startswith("LLMServer")]
    deployment = app.deployments[name]
    return str(deployment.status), dict(deployment.replica_states)


def test_a_killed_engine_is_replaced_and_no_request_hangs(stack: LocalStack, http: httpx.Client) -> None:
    before = _serving_pids()
    (engine,) = before["engine"]
    psutil.Process(engine).kill()
    # A request meanwhile is answered, one way or the other, within the client's timeout.
    try:
        response = http.post("/chat/completions", json=_chat(), timeout=90)
    except httpx.TimeoutException:
        pytest.fail("a request to the dead engine hung past the client's timeout")
    assert response.status_code in (200, 500, 503), response.status_code
    seen: set[str] = set()
    after = before
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status, replicas = _deployment_status()
        seen.add(status)
        after = _serving_pids()
        healthy = status.endswith("HEALTHY") and "UNHEALTHY" not in status
        if healthy and after["engine"] and not after["engine"] & before["engine"] and replicas.get("RUNNING") == 1:
            break
        time.sleep(2)
    else:
        raise AssertionError(f"the replica was not replaced; statuses seen: {seen}")
    assert after["LLMServer"] != before["LLMServer"], f"Ray did not replace the replica (statuses seen: {seen})"
    print("deployment statuses seen while the engine was replaced:", sorted(seen))
    _serves(http)
