"""The serving benchmark's harness without an engine: load generator, statistics and report.

A fake OpenAI-compatible server (aiohttp, in the test's event loop) answers `/v1/models` and
`/v1/completions` (plain and streaming, with `usage`), honours `max_tokens`, and can be told to
fail or stall chosen requests. The harness's load generator runs a handful of requests against
it; the tests check what it counts (tokens, TTFT on streaming requests only, errors, timeouts,
the concurrency bound) and that the report code (rows, ratios to the baseline, goals, tables)
turns results into what the benchmark prints. No Ray, no vLLM.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import loadgen  # noqa: E402
import serving_overhead  # noqa: E402

MODEL = "m"


@dataclass
class FakeServer:
    """Counts what it was sent; `fail` and `stall` name prompts (by their tag) to answer badly."""

    fail: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    # Streams tokens that detokenize to nothing (a random model's special tokens).
    silent: set[str] = field(default_factory=set)
    token_delay_s: float = 0.001
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        tag = body["prompt"].split()[0]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if body.get("model") != MODEL:
                return web.json_response({"error": {"message": "unknown model"}}, status=404)
            if tag in self.fail:
                return web.json_response({"error": {"message": "engine fell over"}}, status=500)
            if tag in self.stall:
                await asyncio.sleep(3)
            tokens = int(body["max_tokens"])
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": tokens}
            if not body.get("stream"):
                await asyncio.sleep(self.token_delay_s * tokens)
                return web.json_response({"choices": [{"index": 0, "text": "x" * tokens}], "usage": usage})
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(tokens):
                await asyncio.sleep(self.token_delay_s)
                chunk = {"choices": [{"index": 0, "text": "" if tag in self.silent else "x"}], "usage": None}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, str]]:
    server = FakeServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def workload(**overrides: Any) -> loadgen.WorkloadSpec:
    values: dict[str, Any] = {
        "name": "test",
        "concurrency": [3],
        "requests": 8,
        "warmup_requests": 2,
        "prompt_tokens": 24,
        "output_tokens": 5,
        "stream_fraction": 0.5,
        "request_timeout_s": 10,
        "phase_timeout_s": 30,
        "seed": 7,
    }
    values.update(overrides)
    return loadgen.WorkloadSpec.model_validate(values)


def test_committed_workload_is_valid_and_unknown_keys_fail(tmp_path: Path) -> None:
    spec = loadgen.load_workload(BENCHMARKS / "workloads" / "serving_overhead.yaml")
    assert spec.fixed_output_length and spec.stream_fraction == 0.5
    assert set(spec.concurrency) == {8, 32}
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.model_dump_json().replace('"seed"', '"sede"'))
    with pytest.raises(ValueError, match="sede"):
        loadgen.load_workload(bad)
    with pytest.raises(ValueError, match="concurrency"):
        workload(concurrency=[0])


def test_requests_are_deterministic_and_half_stream() -> None:
    spec = workload()
    first = loadgen.make_requests(spec, 8, phase="c3")
    assert first == loadgen.make_requests(spec, 8, phase="c3")
    assert first != loadgen.make_requests(spec, 8, phase="warmup-c3")
    assert sum(r.stream for r in first) == 4
    assert len({r.prompt.split()[0] for r in first}) == 8  # no two share a first block
    assert all(len(r.prompt.split()) == spec.prompt_tokens for r in first)
    # With a tokenizer the prompt is cut to the exact count (here: two tokens per word).
    exact = loadgen.make_requests(spec, 2, phase="c3", count_tokens=lambda text: 2 * len(text.split()))
    assert all(len(r.prompt.split()) == spec.prompt_tokens // 2 for r in exact)


async def test_load_generator_counts_tokens_ttft_and_respects_concurrency(fake: tuple[FakeServer, str]) -> None:
    server, base_url = fake
    spec = workload()
    assert await loadgen.wait_ready(base_url, MODEL, timeout_s=10) < 10
    requests = loadgen.make_requests(spec, spec.requests, phase="c3")
    run = await loadgen.run_load(base_url, MODEL, spec, requests, concurrency=3)
    summary = loadgen.summarize(run, expected_output_tokens=spec.output_tokens)

    assert summary["requests"] == summary["ok"] == 8
    assert summary["errors"] == 0 and summary["wrong_length"] == 0
    assert summary["output_tokens"] == 8 * spec.output_tokens
    assert summary["streamed"] == 4
    assert summary["prompt_tokens_mean"] == spec.prompt_tokens
    assert summary["output_tok_s"] > 0 and summary["req_s"] > 0
    assert summary["ttft_p50_ms"] is not None and summary["ttft_p50_ms"] <= summary["e2e_p99_ms"]
    assert summary["e2e_p50_ms"] <= summary["e2e_p99_ms"]
    assert [r.ttft_s is not None for r in run.results] == [r.stream for r in requests]
    assert 1 <= server.most_in_flight <= 3
    # Every request asks for a fixed-length output the way vLLM understands it.
    assert all(b["ignore_eos"] is True and b["min_tokens"] == b["max_tokens"] == 5 for b in server.bodies)
    assert all(b["stream_options"] == {"include_usage": True} for b in server.bodies if b.get("stream"))


async def test_errors_and_timeouts_are_counted_not_timed(fake: tuple[FakeServer, str]) -> None:
    server, base_url = fake
    spec = workload(request_timeout_s=0.3)
    requests = loadgen.make_requests(spec, 6, phase="errors")
    server.fail = {requests[0].prompt.split()[0]}
    server.stall = {requests[1].prompt.split()[0]}
    run = await loadgen.run_load(base_url, MODEL, spec, requests, concurrency=2)
    summary = loadgen.summarize(run, expected_output_tokens=spec.output_tokens)

    assert summary["ok"] == 4 and summary["errors"] == 2
    assert summary["output_tokens"] == 4 * spec.output_tokens
    messages = " ".join(summary["error_messages"])
    assert "HTTP 500" in messages and "timeout" in messages
    # A wrong model is an error too, and readiness never comes for it.
    wrong = await loadgen.run_load(base_url, "other", spec, requests[2:3], concurrency=1)
    assert loadgen.summarize(wrong)["errors"] == 1
    with pytest.raises(TimeoutError):
        await loadgen.wait_ready(base_url, "other", timeout_s=1)


async def test_phase_deadline_stops_starting_requests(fake: tuple[FakeServer, str]) -> None:
    server, base_url = fake
    server.token_delay_s = 0.05  # 5 tokens: 0.25 s a request
    spec = workload()
    requests = loadgen.make_requests(spec, 20, phase="deadline")
    run = await loadgen.run_load(base_url, MODEL, spec, requests, concurrency=1, deadline_s=0.6)
    assert 1 <= len(run.results) < 20
    assert run.not_sent == 20 - len(run.results)
    assert loadgen.summarize(run)["errors"] == run.not_sent


async def test_stream_of_textless_tokens_still_counts(fake: tuple[FakeServer, str]) -> None:
    server, base_url = fake
    spec = workload(stream_fraction=1.0, skip_special_tokens=False)
    requests = loadgen.make_requests(spec, 2, phase="silent")
    server.silent = {requests[0].prompt.split()[0]}
    run = await loadgen.run_load(base_url, MODEL, spec, requests, concurrency=2)
    assert [r.ok for r in run.results] == [True, True]
    assert all(r.ttft_s is not None and r.output_tokens == 5 for r in run.results)
    assert all(b["skip_special_tokens"] is False for b in server.bodies)


def test_percentile_matches_linear_interpolation() -> None:
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([3.0], 99) == 3.0
    assert loadgen.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert loadgen.percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)


async def test_report_rows_ratios_goals_and_tables(fake: tuple[FakeServer, str]) -> None:
    """Three 'systems' against the fake server, through the benchmark's own report code."""
    _, base_url = fake
    spec = workload()
    requests = loadgen.make_requests(spec, 6, phase="c3")
    records = []
    for model in ("tiny", "gpu-regime"):
        for system in serving_overhead.SYSTEMS:
            # Two repeats of three requests, pooled into one row as the benchmark does.
            runs = [await loadgen.run_load(base_url, MODEL, spec, requests[i : i + 3], concurrency=3) for i in (0, 3)]
            cpu = {"server_cpu_s": 0.5, "engine_cpu_s": 0.2, "client_cpu_s": 0.1, "other_cpu_s": 0.0}
            cpus = [{**cpu, "by_process": {"engine-core": 0.2, "proxy": 0.3}}] * 2
            phase = serving_overhead.pooled_row(3, runs, cpus, expected_tokens=5)
            assert phase["ok"] == 6 and phase["server_cpu_s"] == 1.0
            assert phase["by_process"] == {"proxy": 0.6, "engine-core": 0.4}
            assert len(phase["repeat_tok_s"]) == 2 and phase["repeat_spread_pct"] is not None
            records.append({"model": model, "system": system, "phases": [phase]})
    records.append({"model": "tiny", "system": "broken", "error": "it failed to start"})  # no phases: no row

    rows = serving_overhead.result_rows(records)
    assert len(rows) == 6
    assert all(r["overhead_cpu_ms_per_req"] == pytest.approx(100.0) for r in rows)  # (1.0 - 0.4) s / 6
    ratio_rows = serving_overhead.ratios(rows)
    assert {(r["model"], r["system"]) for r in ratio_rows} == {
        (m, s) for m in ("tiny", "gpu-regime") for s in ("ray-serve-llm", "llmdeploy")
    }
    assert all(r["tok_s_x"] is not None and r["tok_s_x"] > 0 for r in ratio_rows)
    goal_rows = serving_overhead.goals(rows)
    assert sorted((g["model"], g["goal"]) for g in goal_rows) == [
        ("gpu-regime", "TTFT p50 vs vLLM"),
        ("gpu-regime", "throughput vs stock Ray Serve LLM"),
        ("gpu-regime", "throughput vs vLLM"),
        ("tiny", "throughput vs stock Ray Serve LLM"),
    ]
    assert all(isinstance(g["met"], bool) for g in goal_rows)

    # Goals judge the numbers: a system at half the baseline's throughput misses them.
    slow = [dict(r) for r in rows]
    for r in slow:
        if r["system"] == "llmdeploy":
            r["output_tok_s"] = r["output_tok_s"] / 2
    assert not any(g["met"] for g in serving_overhead.goals(slow) if g["goal"].startswith("throughput"))
    # A miss smaller than the repeats' spread is reported as noise, not as a miss.
    close = [dict(r, repeat_spread_pct=5.0) for r in rows]
    stock = {r["model"]: r["output_tok_s"] for r in close if r["system"] == "ray-serve-llm"}
    for r in close:
        if r["system"] == "llmdeploy":
            r["output_tok_s"] = stock[r["model"]] * 0.97
    verdicts = {g["verdict"] for g in serving_overhead.goals(close) if g["goal"].startswith("throughput vs stock")}
    assert verdicts == {"within noise"}

    text = serving_overhead.results_table(rows)
    assert text.splitlines()[0].split()[:4] == ["model", "system", "conc", "ok"]
    assert len(text.splitlines()) == 2 + 6
    assert "llmdeploy" in serving_overhead.ratios_table(ratio_rows)
    assert "throughput vs vLLM" in serving_overhead.goals_table(goal_rows)
    assert serving_overhead.results_table([]) == "(no rows)"


def test_engine_kwargs_become_vllm_flags() -> None:
    flags = serving_overhead.vllm_cli_flags(
        {
            "max_num_seqs": 32,
            "enable_prefix_caching": True,
            "enable_chunked_prefill": False,
            "disable_log_stats": False,
            "quantization": None,
        }
    )
    assert flags == ["--no-enable-chunked-prefill", "--enable-prefix-caching", "--max-num-seqs", "32"]
