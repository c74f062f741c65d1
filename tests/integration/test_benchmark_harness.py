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
