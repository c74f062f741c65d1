"""The reconcile benchmark's harness runs end to end (tiny count), and its invariants hold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_operator_reconcile_harness() -> None:
    import operator_reconcile

    phases = {p["phase"]: p for p in operator_reconcile.run(count=3, quiet_s=1.5)}
    assert set(phases) == {"create", "ready", "steady", "update", "restart"}
    assert all(p["noop_writes"] == 0 for p in phases.values())
    assert phases["steady"]["writes"] == 0
    assert phases["restart"]["writes"] == 0
    assert phases["create"]["writes"] >= 3  # one RayService each, at least


def test_operator_converges_through_api_faults() -> None:
    """409s on replaces, 429s, 500s, 503s, slow answers and dropped watches at a seeded 15% rate:
    every object still gets exactly one RayService, every spec change lands, status follows the
    children, and nothing is written once things settle."""
    import operator_reconcile

    phases = {
        p["phase"]: p
        for p in operator_reconcile.run(count=8, quiet_s=1.5, faults=operator_reconcile.fault_plan(0.15, seed=3))
    }
    assert phases["create"]["faults"] + phases["update"]["faults"] > 0, "the plan injected nothing"
    assert all(p["noop_writes"] == 0 for p in phases.values())
    assert phases["restart"]["writes"] == 0
