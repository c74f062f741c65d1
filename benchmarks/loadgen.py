"""A bounded, closed-loop load generator for OpenAI-compatible servers, and its statistics.

Reusable by any serving benchmark: a `WorkloadSpec` (pydantic, loaded from YAML under
`benchmarks/workloads/`) says what to send; `make_requests` turns it into a deterministic list
of `RequestSpec`s (same seed, same prompts, same streaming choices, so every system under test
gets the identical request mix); `run_load` sends them with at most `concurrency` in flight
(closed loop: each worker sends its next request when the previous one ends) and returns one
`RequestResult` per request; `summarize` reduces them to throughput and latency percentiles.

Every loop is bounded in count (the list of requests) and in time (a per-request timeout and a
deadline for the whole phase, after which no request is started and stragglers are cancelled).
Only `aiohttp` is needed: no engine, no Ray.

Fixed output lengths: with `fixed_output_length`, requests carry vLLM's `ignore_eos` and
`min_tokens` extra fields so every system generates exactly `output_tokens` tokens, and
`summarize` counts requests that came back with another length (`wrong_length`).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# Words the built-in models' tokenizer was trained on: about one token per word.
_WORD_TEXT = (
    "about above across after again against almost along already also although always among answer "
    "anyone anything area around away back batch because become before begin behind being below best "
    "better between block bring build cache call case cause change check child city cluster come "
    "compute could country cover create current data decode deploy design different during each early "
    "engine enough every example face fact family field find first follow food form found full gateway "
    "give good great group grow hand hard have head hear help here high home house however idea "
    "important increase inside into keep kind know large last later lead learn leave less life light "
    "line list little live load local long look made make many mean memory might model more most move "
    "much must name near need network never next night node nothing number often once only open "
    "operator order other over page paper part people place plan play point policy pool possible power "
    "prefill prefix present problem program prompt public queue question quick read real reason record "
    "region replica request resource response right river road room route same school scale schedule "
    "seem sentence serve server service show side since small something sound spec stand start state "
    "still stop story stream study such system take talk team tell tensor than that their them then "
    "there these thing think those though thought three through time together token took toward tree "
    "true turn under until upon user value very voice want watch water weight well were what when where "
    "which while white whole will with without word work world would write year young"
)
_WORDS = tuple(_WORD_TEXT.split())


class WorkloadSpec(BaseModel):
    """What a serving benchmark sends, per concurrency level. Loaded from YAML; unknown keys fail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Name of the workload, recorded in the results.")
    endpoint: Literal["completions", "chat"] = Field(
        default="completions", description="`/v1/completions` (prompt) or `/v1/chat/completions` (one user turn)."
    )
    concurrency: tuple[int, ...] = Field(min_length=1, description="Requests in flight; one phase per level.")
    requests: int = Field(ge=1, le=100_000, description="Measured requests per concurrency level.")
    warmup_requests: int = Field(ge=0, le=10_000, description="Requests sent before each measured phase, not counted.")
    prompt_tokens: int = Field(
        ge=1, le=100_000, description="Prompt length in tokens (approximate without a tokenizer)."
    )
    output_tokens: int = Field(ge=1, le=100_000, description="`max_tokens` of every request.")
    fixed_output_length: bool = Field(
        default=True, description="Send `ignore_eos` and `min_tokens` so every request generates `output_tokens`."
    )
    stream_fraction: float = Field(ge=0.0, le=1.0, description="Share of requests sent with `stream: true`.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    skip_special_tokens: bool = Field(
        default=True,
        description=(
            "vLLM's default. False makes special tokens show as text, so a random-weight model that "
            "emits them still streams text and every streaming request has a TTFT."
        ),
    )
    request_timeout_s: float = Field(gt=0, le=3600, description="Each request is abandoned (an error) after this.")
    phase_timeout_s: float = Field(gt=0, le=86_400, description="No request starts after this; stragglers cancelled.")
    seed: int = Field(default=0, description="Seeds prompts and the streaming choice.")

    @field_validator("concurrency")
    @classmethod
    def _positive_levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(level < 1 for level in value):
            raise ValueError("every concurrency level must be at least 1")
        if len(set(value)) != len(value):
            raise ValueError("concurrency levels must be distinct")
        return value


def load_workload(path: Path | str) -> WorkloadSpec:
    with Path(path).open() as handle:
        return WorkloadSpec.model_validate(yaml.safe_load(handle))


@dataclass(frozen=True)
class RequestSpec:
    index: int
    prompt: str
    stream: bool
    max_tokens: int


@dataclass
class RequestResult:
    index: int
    stream: bool
    ok: bool
    # Seconds since the phase started (loop clock), and durations in seconds.
    start_s: float
    latency_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    status: int | None = None
    error: str | None = None


TokenCounter = Callable[[str], int]


def make_prompt(rng: random.Random, tag: str, target_tokens: int, count_tokens: TokenCounter | None = None) -> str:
    """A prompt of about `target_tokens` tokens that starts with `tag` (so no two share a prefix block).

    With `count_tokens` (the served model's tokenizer) the length is exact up to a word; without
    it one word counts as one token.
    """
    words = [tag]
    while len(words) < target_tokens:
        words.append(rng.choice(_WORDS))
    if count_tokens is None:
        return " ".join(words)
    # Trim or extend one word at a time; bounded by the prompt's own length.
    for _ in range(4 * target_tokens):
        tokens = count_tokens(" ".join(words))
        if tokens > target_tokens and len(words) > 1:
            words.pop()
        elif tokens < target_tokens - 1:
            words.append(rng.choice(_WORDS))
        else:
            break
    return " ".join(words)


def make_requests(
    spec: WorkloadSpec, count: int, *, phase: str, count_tokens: TokenCounter | None = None
) -> list[RequestSpec]:
    """`count` requests for the phase called `phase`: deterministic in (seed, phase, count).

    Exactly `round(count * stream_fraction)` of them stream, spread by a seeded shuffle.
    """
    rng = random.Random(f"{spec.seed}:{phase}")
    streaming = round(count * spec.stream_fraction)
    flags = [True] * streaming + [False] * (count - streaming)
    rng.shuffle(flags)
    return [
        RequestSpec(
            index=i,
            prompt=make_prompt(rng, f"[{phase}#{i}]", spec.prompt_tokens, count_tokens),
            stream=flags[i],
            max_tokens=spec.output_tokens,
        )
        for i in range(count)
    ]


def request_body(spec: WorkloadSpec, request: RequestSpec, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens, "temperature": spec.temperature}
    if spec.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if spec.fixed_output_length:
        # vLLM's extra sampling parameters (also accepted through Ray Serve LLM).
        body["ignore_eos"] = True
        body["min_tokens"] = request.max_tokens
    if not spec.skip_special_tokens:
        body["skip_special_tokens"] = False
    return body


def _chunk_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return str(choice.get("text") or "")
    delta = choice.get("delta") or {}
    return str(delta.get("content") or "")


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    request: RequestSpec,
    *,
    started: float,
    timeout_s: float,
) -> RequestResult:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = RequestResult(index=request.index, stream=request.stream, ok=False, start_s=t0 - started, latency_s=0.0)
    try:
        async with asyncio.timeout(timeout_s), session.post(url, json=body) as response:
            result.status = response.status
            if response.status != 200:
                text = await response.text()
                result.error = f"HTTP {response.status}: {text[:200]}"
            elif request.stream:
                await _read_stream(response, result, t0)
            else:
                payload = await response.json()
                usage = payload.get("usage") or {}
                result.output_tokens = int(usage.get("completion_tokens") or 0)
                result.prompt_tokens = usage.get("prompt_tokens")
                result.ok = bool(payload.get("choices"))
                if not result.ok:
                    result.error = f"no choices in the response: {json.dumps(payload)[:200]}"
    except TimeoutError:
        result.error = f"timeout after {timeout_s:g} s"
    except (aiohttp.ClientError, json.JSONDecodeError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:240]
    result.latency_s = loop.time() - t0
    if not result.ok:
        result.ttft_s = None
    return result


async def _read_stream(response: aiohttp.ClientResponse, result: RequestResult, t0: float) -> None:
    loop = asyncio.get_running_loop()
    content_chunks = 0
    usage_tokens: int | None = None
    first_choice: float | None = None
    done = False
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            result.error = f"stream error: {json.dumps(chunk['error'])[:200]}"
            return
        for choice in chunk.get("choices") or []:
            if first_choice is None:
                first_choice = loop.time() - t0
            if _chunk_text(choice):
                if result.ttft_s is None:
                    result.ttft_s = loop.time() - t0
                content_chunks += 1
        usage = chunk.get("usage")
        if usage:
            usage_tokens = int(usage.get("completion_tokens") or 0)
            result.prompt_tokens = usage.get("prompt_tokens")
    result.output_tokens = usage_tokens if usage_tokens is not None else content_chunks
    if result.ttft_s is None:
        # Only tokens that detokenize to nothing (special tokens): the first chunk is the first token.
        result.ttft_s = first_choice
    result.ok = done and result.output_tokens > 0
    if not result.ok:
        result.error = "stream ended without [DONE]" if not done else "stream carried no tokens"


@dataclass
class LoadRun:
    results: list[RequestResult]
    wall_s: float
    not_sent: int
    timed_out: bool = False


async def run_load(
    base_url: str,
    model: str,
    spec: WorkloadSpec,
    requests: Sequence[RequestSpec],
    *,
    concurrency: int,
    deadline_s: float | None = None,
) -> LoadRun:
    """Send `requests` with at most `concurrency` in flight; bounded by count and by `deadline_s`.

    `base_url` ends in `/v1`. No request starts after `deadline_s` (default the workload's
    `phase_timeout_s`); at `deadline_s + request_timeout_s` everything still running is
    cancelled (each request also has its own timeout, so this is a backstop).
    """
    deadline = spec.phase_timeout_s if deadline_s is None else deadline_s
    path = "/chat/completions" if spec.endpoint == "chat" else "/completions"
    url = base_url.rstrip("/") + path
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = iter(requests)
    results: list[RequestResult] = []
    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        for request in pending:  # a shared iterator: each request is taken by one worker
            if loop.time() - started >= deadline:
                return
            sent += 1
            body = request_body(spec, request, model)
            results.append(await _send(session, url, body, request, started=started, timeout_s=spec.request_timeout_s))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timed_out = False
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.ensure_future(worker(session)) for _ in range(max(1, min(concurrency, len(requests))))]
        done, still = await asyncio.wait(workers, timeout=deadline + spec.request_timeout_s + 5.0)
        if still:
            timed_out = True
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        for task in done:
            task.result()  # a bug in the worker itself must not pass silently
    wall = _span(results) if results else loop.time() - started
    return LoadRun(
        results=sorted(results, key=lambda r: r.index), wall_s=wall, not_sent=len(requests) - sent, timed_out=timed_out
    )


def _span(results: Sequence[RequestResult]) -> float:
    """From the first request's start to the last one's end."""
    return max(r.start_s + r.latency_s for r in results) - min(r.start_s for r in results)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), `q` in [0, 100]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(run: LoadRun, *, expected_output_tokens: int | None = None) -> dict[str, Any]:
    """Throughput and latency of one phase. Latencies in milliseconds; errors counted, not timed.

    Throughput divides the tokens of successful requests by the phase's span (first start to
    last end). TTFT is measured on streaming requests only (first chunk that carries text);
    TPOT is (latency - TTFT) / (tokens - 1) on those.
    """
    ok = [r for r in run.results if r.ok]
    errors = [r for r in run.results if not r.ok]
    streamed = [r for r in ok if r.stream and r.ttft_s is not None]
    latencies = [r.latency_s * 1e3 for r in ok]
    ttfts = [r.ttft_s * 1e3 for r in streamed if r.ttft_s is not None]
    tpots = [
        (r.latency_s - r.ttft_s) * 1e3 / (r.output_tokens - 1)
        for r in streamed
        if r.ttft_s is not None and r.output_tokens > 1
    ]
    tokens = sum(r.output_tokens for r in ok)
    wall = run.wall_s if run.wall_s > 0 else float("nan")
    wrong = [r for r in ok if expected_output_tokens is not None and r.output_tokens != expected_output_tokens]
    messages: dict[str, int] = {}
    for r in errors:
        key = (r.error or "unknown")[:120]
        messages[key] = messages.get(key, 0) + 1

    def rnd(value: float | None, digits: int = 1) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "requests": len(run.results),
        "ok": len(ok),
        "errors": len(errors) + run.not_sent,
        "not_sent": run.not_sent,
        "timed_out": run.timed_out,
        "streamed": len(streamed),
        "wrong_length": len(wrong),
        "output_tokens": tokens,
        "prompt_tokens_mean": rnd(_mean([float(r.prompt_tokens) for r in ok if r.prompt_tokens is not None])),
        "wall_s": round(run.wall_s, 3),
        "output_tok_s": round(tokens / wall, 1),
        "req_s": round(len(ok) / wall, 3),
        "ttft_p50_ms": rnd(percentile(ttfts, 50)),
        "ttft_p99_ms": rnd(percentile(ttfts, 99)),
        "e2e_p50_ms": rnd(percentile(latencies, 50)),
        "e2e_p99_ms": rnd(percentile(latencies, 99)),
        "tpot_p50_ms": rnd(percentile(tpots, 50), 2),
        "error_messages": messages,
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


async def wait_ready(base_url: str, model: str, *, timeout_s: float, alive: Callable[[], bool] | None = None) -> float:
    """Poll `GET {base_url}/models` until it lists `model`; seconds waited. Bounded by `timeout_s`.

    `alive` is asked between polls (a server process that exited will never become ready).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    last = "no answer yet"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while loop.time() - started < timeout_s:
            if alive is not None and not alive():
                raise RuntimeError(f"the server exited before it was ready ({last})")
            try:
                async with session.get(base_url.rstrip("/") + "/models") as response:
                    if response.status == 200:
                        ids = [m.get("id") for m in (await response.json()).get("data", [])]
                        if model in ids:
                            return loop.time() - started
                        last = f"models {ids}"
                    else:
                        last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{base_url} did not list model {model!r} within {timeout_s:g} s ({last})")
