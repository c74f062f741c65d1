"""The observed stack (benchmarks/observed_stack.py), started once for the module that uses it."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import observed_stack

# Wait for Ray's metrics agent (it exports every few seconds) and a few 1 s scrapes after the traffic.
SCRAPED_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def observed() -> Iterator[tuple[observed_stack.ObservedStack, observed_stack.TrafficReport]]:
    """Prometheus scraping the operator and the serving stack, after a little traffic."""
    pytest.importorskip("vllm", reason="vLLM is not installed")
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    with (
        tempfile.TemporaryDirectory(prefix="observed-", ignore_cleanup_errors=True) as workdir,
        observed_stack.observed_stack(Path(workdir)) as stack,
    ):
        traffic = observed_stack.send_traffic(stack.serving.base_url)
        for conditions in (observed_stack.SCRAPED_WHEN, observed_stack.INCREASED_WHEN):
            observed_stack.wait_until(
                lambda conditions=conditions: all(stack.prometheus.query(expr) for expr in conditions),
                timeout_s=SCRAPED_TIMEOUT_S,
                what=f"Prometheus to see the traffic ({', '.join(conditions)})",
            )
            if conditions is observed_stack.SCRAPED_WHEN:
                observed_stack.send_traffic(stack.serving.base_url, report=traffic)
        time.sleep(observed_stack.SETTLE_S)
        yield stack, traffic
