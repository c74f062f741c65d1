"""The routing simulation runs end to end (--quick) and its results are consistent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

TRACES = {"shared-prompts", "multi-turn", "few-shot", "hot-prompt", "unique"}
POLICIES = {"round-robin", "power-of-two", "ray-prefix", "ray-prefix-t20", "ours", "ours-stride4"}


def test_routing_simulation_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import results
    import routing

    monkeypatch.setattr(results, "RESULTS", tmp_path)
    monkeypatch.setattr(routing, "RESULTS", tmp_path)
    assert routing.main(["--quick", "--out", "routing-test"]) == 0

    data = json.loads((tmp_path / "routing-test.json").read_text())
    assert (tmp_path / "routing-test.png").stat().st_size > 0
    assert {"git_sha", "machine", "versions", "setup", "cost_model", "goals"} <= set(data)
    assert set(data["results"]) == TRACES
    for trace, by_policy in data["results"].items():
        assert set(by_policy) == POLICIES, trace
        ceiling = data["traces"][trace]["ceiling"]["hit_rate"]
        for policy, res in by_policy.items():
            assert 0.0 <= res["hit_rate"] <= ceiling + 1e-9, (trace, policy)
            assert res["ttft_p50_ms"] <= res["ttft_p99_ms"]
            assert res["load_max_mean"] >= 1.0
            assert sum(res["extra"]["seeds"]["11"]["routed"]) == res["requests"]
        for name in ("ours", "ours-stride4"):
            ours = by_policy[name]
            assert ours["decision_p50_us"] is not None and ours["decision_p99_us"] is not None
            # The index was full before the first decision and stays at its limit.
            assert ours["extra"]["seeds"]["11"]["index_entries"] == data["setup"]["index_blocks"]
    assert data["traces"]["unique"]["ceiling"]["hit_rate"] == 0.0
    assert all(r["hit_rate"] == 0.0 for r in data["results"]["unique"].values())
    # Reuse exists where the traces say it does.
    assert all(data["traces"][t]["ceiling"]["hit_rate"] > 0.3 for t in TRACES - {"unique"})
    assert {g["goal"] for g in data["goals"]} >= {"decision p99 <= 200 us with a full 100k index"}
