"""The autoscaling simulation runs end to end on one trace, and its references mean what they say."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_step_surge_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoscaling
    import results

    monkeypatch.setattr(results, "RESULTS", tmp_path)
    monkeypatch.setattr(autoscaling, "RESULTS", tmp_path)
    assert autoscaling.main(["--traces", "step-surge", "--no-plots", "--out", "autoscaling-test"]) == 0

    data = json.loads((tmp_path / "autoscaling-test.json").read_text())
    rows = {row["policy"]: row for row in data["rows"]}
    assert set(rows) == set(autoscaling.MAIN_POLICIES)
    # The queue-depth rows are Ray's controller running the project's policy: its reasons.
    moves = data["decisions"]["step-surge"]["queue-depth"]
    assert moves and all("replica" in reason or "arrivals" in reason for *_, reason in moves)
    # Foresight has its replicas ready when the surge lands; reacting cannot, by a cold start.
    assert rows["clairvoyant"]["slo_%"] >= 99.0
    assert rows["clairvoyant"]["surge_to_capacity_s"] == 0
    assert rows["oracle-now"]["surge_to_capacity_s"] >= autoscaling.COLD_START_RANGE_S[0]
    assert rows["oracle-now"]["slo_%"] < rows["clairvoyant"]["slo_%"]
    goals = {goal["goal"] for goal in data["goals"]}
    assert "step-surge: queue-depth SLO >= 99 %" in goals
    assert len(data["goals_with_foresight"]) == len(data["goals"])


def test_every_policy_draws_the_same_cold_starts() -> None:
    import autoscaling

    class Quiet:
        name = "quiet"

        def on_ready(self, cluster: object) -> None: ...
        def on_stopped(self, replica: object) -> None: ...

    def cold_starts(router_draws: int, scale_steps: list[int]) -> list[float]:
        rng = np.random.default_rng(3)
        rng.random(router_draws)  # what routing drew before differs between policies
        deployment = autoscaling.Deployment()
        cluster = autoscaling.SimCluster(deployment, autoscaling.CostModel.h100(), rng, np.random.default_rng([3, 1]))
        started: list[autoscaling.Replica] = []
        for i, n in enumerate(scale_steps):
            cluster.scale_to(float(i), n, Quiet(), [])  # type: ignore[arg-type]
            started += [r for r in cluster.replicas if r not in started]
        return [r.ready_at - r.started_at for r in started]

    one_at_a_time = cold_starts(0, [1, 2, 3, 4])
    all_at_once = cold_starts(17, [4])
    assert one_at_a_time == all_at_once
    assert all(60.0 <= s <= 180.0 for s in one_at_a_time)


MEASURED = Path(__file__).resolve().parents[3] / "shared" / "measurements" / "h100-costmodel.json"


@pytest.mark.skipif(not MEASURED.exists(), reason="the measured H100 cost model (test data) is not present")
def test_the_simulations_cost_model_is_the_measured_one() -> None:
    import h100

    measured = json.loads(MEASURED.read_text())
    prefill = {int(k): v["ms"] for k, v in measured["llama8b_bf16_prefill_batch1"].items()}
    decode = {int(k): v["ms_per_step"] for k, v in measured["llama8b_bf16_decode_step_ctx1024"].items()}
    assert (prefill, decode) == (h100.PREFILL_MS, h100.DECODE_STEP_MS)
