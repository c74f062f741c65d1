"""Overload: bursts beyond an engine replica's admission limits against the local stack.

Serves `builtin://tiny` with `serving.maxOngoingRequests` and `maxQueuedRequests` small, then
sends bursts of concurrent chat requests (128 generated tokens each). The baseline in the same
run is a burst that fits the limits (ongoing + queued). For each burst: requests accepted and
shed (503/429), latency of the shed answers and of the accepted ones (p50/p99), whether every
accepted request completed in full, whether shed answers carry Retry-After, and the resident
memory of the serving processes (ingress, engine replica, engine core) before and after.

    .venv/bin/python benchmarks/overload.py [--bursts 3 --burst-size 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import provenance, table, write

from llmdeploy.testing.local_stack import local_stack, serving_args_from_manifest

MAX_ONGOING = 2
MAX_QUEUED = 2
MAX_TOKENS = 128
MANIFEST = f"""
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {{name: tiny}}
spec:
  model: {{source: "builtin://tiny", maxModelLen: 1024}}
  accelerator: {{type: cpu, kvCacheMemoryMiB: 64}}
  batching: {{maxNumSeqs: 4, maxNumBatchedTokens: 1024}}
  serving: {{maxOngoingRequests: {MAX_ONGOING}, maxQueuedRequests: {MAX_QUEUED}}}
  replicas: 1
"""


def _serving_rss_mib() -> float:
    total = 0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            line = " ".join(proc.cmdline())
            if "EngineCore" in line or "ServeReplica" in line:
                total += proc.memory_info().rss
    return total / 2**20


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _burst(client: httpx.Client, n: int) -> list[tuple[int, float, dict[str, Any] | None, str | None]]:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
    }

    def one(_: int) -> tuple[int, float, dict[str, Any] | None, str | None]:
        started = time.monotonic()
        response = client.post("/chat/completions", json=body)
        elapsed = time.monotonic() - started
        payload = response.json() if response.status_code == 200 else None
        return response.status_code, elapsed, payload, response.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _row(kind: str, index: int, n: int, answers: list[Any], rss_before: float, rss_after: float) -> dict[str, Any]:
    shed = [a for a in answers if a[0] in (429, 503)]
    done = [a for a in answers if a[0] == 200]
    complete = sum(1 for a in done if a[2] and a[2]["usage"]["completion_tokens"] == MAX_TOKENS)
    ms = 1000.0
    return {
        "burst": f"{kind} {index}",
        "sent": n,
        "accepted": len(done),
        "shed": len(shed),
        "other": n - len(done) - len(shed),
        "accepted complete": complete,
        "shed p50 ms": (_percentile([a[1] for a in shed], 0.5) or 0) * ms,
        "shed p99 ms": (_percentile([a[1] for a in shed], 0.99) or 0) * ms,
        "accepted p50 ms": (_percentile([a[1] for a in done], 0.5) or 0) * ms,
        "accepted p99 ms": (_percentile([a[1] for a in done], 0.99) or 0) * ms,
        "retry-after": ",".join(sorted({a[3] or "-" for a in shed})) or "",
        "rss before MiB": rss_before,
        "rss after MiB": rss_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bursts", type=int, default=3, help="overload bursts (default 3)")
    parser.add_argument("--burst-size", type=int, default=32, help="requests per overload burst (default 32)")
    options = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with (
        local_stack(serving_args_from_manifest(MANIFEST)) as stack,
        httpx.Client(base_url=stack.openai_url, timeout=300) as client,
    ):
        client.post("/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        fits = MAX_ONGOING + MAX_QUEUED
        rss = _serving_rss_mib()
        answers = _burst(client, fits)
        rows.append(_row("within limits", 1, fits, answers, rss, rss := _serving_rss_mib()))
        for index in range(1, options.bursts + 1):
            answers = _burst(client, options.burst_size)
            rows.append(_row("overload", index, options.burst_size, answers, rss, rss := _serving_rss_mib()))
            time.sleep(2)
    columns = list(rows[0])
    print(table(rows, columns))
    overload = [r for r in rows if r["burst"].startswith("overload")]
    summary = {
        "shed_share": statistics.mean(r["shed"] / r["sent"] for r in overload),
        "accepted_all_complete": all(r["accepted complete"] == r["accepted"] for r in rows),
        "rss_growth_mib_first_to_last_overload": overload[-1]["rss after MiB"] - overload[0]["rss after MiB"],
    }
    print(summary)
    path = write(
        "overload",
        {
            "provenance": provenance(),
            "config": {
                "model": "builtin://tiny",
                "max_ongoing_requests": MAX_ONGOING,
                "max_queued_requests": MAX_QUEUED,
                "max_tokens": MAX_TOKENS,
                "bursts": options.bursts,
                "burst_size": options.burst_size,
            },
            "rows": rows,
            "summary": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
