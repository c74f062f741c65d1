"""The Ray dashboard's Serve details map onto replica counts, queue depth and scaling history."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmdeploy.operator.serve_state import (
    MAX_HISTORY,
    POLICY_QUEUE_DEPTH_METRIC,
    ServeObservation,
    engine_observation,
    policy_queue_depth,
)
from llmdeploy.operator.status import merge_history, observed_move
from llmdeploy.testing.serve_details import ray_metrics_text, serve_details


def test_counts_queue_and_history() -> None:
    details = serve_details(
        ["RUNNING", "STARTING"],
        2,
        [(1_700_000_000.0, 1, 2, "queue 9.5/replica > 4")],
        {"queue_depth_per_replica": 4.75},
    )
    obs = engine_observation(details)
    assert obs is not None
    assert (obs.desired_replicas, obs.replicas, obs.ready_replicas, obs.queue_depth) == (2, 2, 1, 4.75)
    assert obs.history == ({"time": "2023-11-14T22:13:20Z", "from": 1, "to": 2, "reason": "queue 9.5/replica > 4"},)


def test_stopping_replicas_do_not_count_and_no_ops_are_not_history() -> None:
    obs = engine_observation(serve_details(["RUNNING", "STOPPING"], 1, [(1.0, 1, 1, "stable")]))
    assert obs is not None
    assert (obs.replicas, obs.ready_replicas, obs.history, obs.queue_depth) == (1, 1, (), None)


def test_no_application_yet() -> None:
    assert engine_observation({"applications": {}}) is None


def test_history_is_merged_and_bounded() -> None:
    kept = [{"time": f"2026-01-01T00:00:{i:02d}Z", "from": i, "to": i + 1, "reason": "r"} for i in range(15)]
    seen = tuple(kept[-3:]) + tuple(
        {"time": f"2026-01-01T00:01:{i:02d}Z", "from": 9, "to": 8, "reason": "idle"} for i in range(10)
    )
    merged = merge_history(kept, seen)
    assert len(merged) == MAX_HISTORY
    assert merged[-1]["time"] == "2026-01-01T00:01:09Z"
    assert len({(e["time"], e["from"], e["to"]) for e in merged}) == MAX_HISTORY


def test_the_fixture_is_rays_own_schema() -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    details = serve_details(["RUNNING"], 1, [(1.0, 0, 1, "wake")], {"queue_depth_per_replica": 1.0})
    app = details["applications"]["llm"]
    for deployment in app["deployments"].values():
        schema.DeploymentDetails.model_validate({**deployment, "deployment_config": {"name": deployment["name"]}})


def test_ray_260_fills_no_autoscaling_detail_so_queue_and_history_come_from_elsewhere() -> None:
    obs = engine_observation(serve_details(["RUNNING", "STARTING"], 2))
    assert obs is not None
    assert (obs.desired_replicas, obs.replicas, obs.ready_replicas, obs.queue_depth, obs.history) == (2, 2, 1, None, ())


def test_queue_depth_from_the_policys_gauge_on_the_head_metrics_port() -> None:
    assert policy_queue_depth(ray_metrics_text(4.5)) == 4.5
    assert policy_queue_depth(ray_metrics_text(None)) is None
    # Another application's engine, or text that is not Prometheus', gives nothing.
    assert policy_queue_depth(ray_metrics_text(4.5).replace('application="llm"', 'application="other"')) is None
    assert policy_queue_depth("not {prometheus") is None


def test_the_gauge_name_is_the_one_the_policy_sets() -> None:
    autoscaling = pytest.importorskip("llmdeploy.serving.autoscaling")
    assert POLICY_QUEUE_DEPTH_METRIC == "ray_" + autoscaling.QUEUE_DEPTH_METRIC


NOW = datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC)


def test_a_changed_target_is_recorded_as_a_move_with_the_queue_seen() -> None:
    current = {"desiredReplicas": 1, "scalingHistory": []}
    serve = ServeObservation(desired_replicas=2, replicas=2, ready_replicas=1, queue_depth=4.5, history=())
    assert observed_move(current, serve, NOW) == (
        {"time": "2026-11-26T09:00:00Z", "from": 1, "to": 2, "reason": "Ray Serve target 1 -> 2 (queue 4.5/replica)"},
    )


@pytest.mark.parametrize(
    "current",
    [
        {"desiredReplicas": 2, "scalingHistory": []},  # unchanged
        {"desiredReplicas": 1},  # the first dashboard read: the count came from the spec
        {"scalingHistory": []},  # no count yet
    ],
)
def test_no_move_without_a_change_seen_between_two_dashboard_reads(current: dict[str, object]) -> None:
    serve = ServeObservation(desired_replicas=2, replicas=2, ready_replicas=2, queue_depth=None, history=())
    assert observed_move(current, serve, NOW) == ()
