"""The queue-depth autoscaling policy: `decide` on metric sequences, and the adapter Ray calls.

The sequences come from a small fluid model of a deployment (arrivals per second, replicas that
complete `MU` requests per second when saturated and hold `SEQS` running requests, a backlog
that waits in the engines and at the handle, replicas that serve `READY_AFTER_S` after they are
asked for). Each step builds the `Observation` Ray's context would give, calls `decide` once a
second, and applies its answer as Ray's controller would. The last tests hand the policy to
Ray itself: a real `AutoscalingContext`, Ray's policy wrapper, and Ray's controller-side
autoscaling state.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from llmdeploy.serving import app
from llmdeploy.serving.autoscaling import (
    FINISHED_RATE_KEY,
    KV_CACHE_USAGE_KEY,
    POLICY_IMPORT_PATH,
    RUNNING_KEY,
    WAITING_KEY,
    Observation,
    PolicyState,
    QueueDepthPolicy,
    ReplicaLoad,
    _full_batch_throughput,
    decide,
)
from llmdeploy.serving.config import Accelerator, DeploymentArgs, ScalingConfig

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray[serve] is not installed")

SEQS = 32
MU = 4.0  # requests per second a saturated replica completes
READY_AFTER_S = 30.0


def config(**changes: Any) -> ScalingConfig:
    fields: dict[str, Any] = {
        "target_queue_depth": 4.0,
        "max_num_seqs": SEQS,
        "min_replicas": 1,
        "max_replicas": 6,
        "upscale_delay_s": 15.0,
        "downscale_delay_s": 120.0,
        "cold_start_s": 60.0,
    }
    return ScalingConfig(**(fields | changes))


@dataclass
class Fluid:
    """A deployment as fluid: arrivals, per-replica throughput, a backlog, replicas starting."""

    replicas: int
    backlog: float = 0.0
    kv_cache_usage: float = 0.1
    starting: list[float] = field(default_factory=list)  # times the starting replicas serve
    # Seconds a request's time in the batch grows per running sequence (decode steps slow down
    # as the batch grows); a full batch still completes MU per second.
    slowdown: float = 0.0

    def running(self, per_replica: float) -> float:
        """Requests in one unsaturated replica's batch (Little's law with the batch curve)."""
        base = SEQS / MU - self.slowdown * SEQS
        return per_replica * base / (1 - per_replica * self.slowdown)

    def ready(self, t: float) -> int:
        return self.replicas - sum(1 for at in self.starting if at > t)

    def scale(self, t: float, target: int) -> None:
        if target > self.replicas:
            self.starting += [t + READY_AFTER_S] * (target - self.replicas)
        elif target < self.replicas:
            self.starting = sorted(self.starting)[: max(0, len(self.starting) - (self.replicas - target))]
        self.replicas = target

    def observe(self, t: float, arrivals: float, dt: float) -> Observation:
        ready = self.ready(t)
        capacity = ready * MU
        self.backlog = max(0.0, self.backlog + (arrivals - capacity) * dt)
        if ready == 0:
            return Observation(t, 0, self.replicas, handle_queued=self.backlog, ongoing=self.backlog)
        saturated = self.backlog > 0 or arrivals >= capacity
        running = SEQS if saturated else self.running(arrivals / ready)
        finished = MU if saturated else arrivals / ready
        in_engine = min(self.backlog / ready, SEQS)
        loads = tuple(
            ReplicaLoad(running, in_engine, self.kv_cache_usage, finished, replica=f"r{i}") for i in range(ready)
        )
        queued = self.backlog - in_engine * ready
        return Observation(
            t,
            ready,
            self.replicas,
            handle_queued=queued,
            ongoing=ready * (running + in_engine) + queued,
            replicas=loads,
        )


@dataclass(frozen=True)
class Step:
    time_s: float
    replicas: int
    reason: str
    backlog: float
    history: tuple[tuple[float, int, int, str], ...] = ()


def drive(
    cfg: ScalingConfig,
    arrivals: Callable[[float], float],
    *,
    until_s: float,
    replicas: int = 1,
    state: PolicyState | None = None,
    kv_cache_usage: float = 0.1,
    slowdown: float = 0.0,
) -> list[Step]:
    """Decide once a second over the fluid model, applying each decision as Ray would."""
    world = Fluid(replicas, kv_cache_usage=kv_cache_usage, slowdown=slowdown)
    state = state or PolicyState()
    steps = []
    t = 0.0
    while t < until_s:
        t += 1.0
        obs = world.observe(t, arrivals(t), 1.0)
        decision = decide(state, obs, cfg)
        state = decision.state
        world.scale(t, decision.replicas)
        steps.append(Step(t, decision.replicas, decision.reason, world.backlog, decision.state.history))
    return steps


def changes(steps: Sequence[Step]) -> list[tuple[float, int, int]]:
    out, previous = [], None
    for step in steps:
        if previous is not None and step.replicas != previous:
            out.append((step.time_s, previous, step.replicas))
        previous = step.replicas
    return out


def first_change(steps: Sequence[Step]) -> tuple[float, int, int]:
    (found, *_) = changes(steps)
    return found


def step_load(before: float, after: float, at_s: float) -> Callable[[float], float]:
    return lambda t: before if t < at_s else after


# --- metric sequences -----------------------------------------------------------------------


def test_surge_scales_up_after_the_delay_to_the_throughput_the_arrivals_need() -> None:
    steps = drive(config(), step_load(2.0, 12.0, 100.0), until_s=600)

    moved = changes(steps)
    assert moved[0][0] >= 100 + config().upscale_delay_s
    # 12/s at 90 % of 4/s per replica needs 4; the backlog formed while they start asks for more,
    # which go once it has drained, down to what 12/s needs at the 70 % hysteresis mark (5).
    assert max(s.replicas for s in steps) <= 6
    assert steps[-1].replicas == math.ceil(12.0 / (0.7 * MU))
    directions = [to > frm for _, frm, to in moved]
    assert directions == sorted(directions, reverse=True), moved  # all ups, then downs: no flapping
    assert steps[-1].backlog == 0


def test_drain_removes_replicas_only_after_the_downscale_delay_and_only_to_what_fits() -> None:
    # Saturated first (the throughput is measured), then the load drops at 300 s.
    steps = drive(config(), step_load(12.0, 2.0, 300.0), until_s=900, replicas=4)

    downs = [c for c in changes(steps) if c[2] < c[1]]
    assert downs, changes(steps)
    assert downs[0][0] >= 300 + config().downscale_delay_s
    # 2/s fits one replica at 70 % of 4/s.
    assert steps[-1].replicas == 1


@pytest.mark.parametrize("period_s", [10.0, 30.0, 60.0])
def test_flapping_load_does_not_flap_the_replicas(period_s: float) -> None:
    def flapping(t: float) -> float:
        return 9.0 if int(t // period_s) % 2 else 3.0

    steps = drive(config(), flapping, until_s=1800, replicas=2)

    moved = changes(steps)
    # At most one settling move per direction over half an hour, never back and forth.
    assert len(moved) <= 2, moved
    directions = [to > frm for _, frm, to in moved]
    assert directions in ([], [True], [False], [True, False]) or len(set(directions)) == 1


def test_scale_to_zero_after_the_idle_time_and_wake_on_the_first_request() -> None:
    cfg = config(scale_to_zero_idle_s=60.0, downscale_delay_s=30.0)

    def trace(t: float) -> float:
        return 2.0 if t < 100 or t >= 400 else 0.0

    steps = drive(cfg, trace, until_s=460)

    zero = next(s for s in steps if s.replicas == 0)
    assert 160 <= zero.time_s < 400
    assert "scale to zero" in zero.reason
    woken = next(s for s in steps if s.time_s >= 400 and s.replicas > 0)
    assert woken.time_s == 400
    assert woken.reason.startswith("wake")


def test_min_replicas_hold_without_scale_to_zero() -> None:
    steps = drive(config(min_replicas=2, downscale_delay_s=10.0), lambda t: 0.0, until_s=300, replicas=3)

    assert steps[-1].replicas == 2
    assert min(s.replicas for s in steps) == 2


def test_budget_caps_the_replicas_and_says_so() -> None:
    steps = drive(config(max_replicas=3), lambda t: 100.0, until_s=300)

    assert max(s.replicas for s in steps) == 3
    assert "max_replicas 3" in steps[-1].reason


def test_spare_replicas_ride_on_top_of_the_load_and_go_with_scale_to_zero() -> None:
    # 2/s fits one replica; with a spare the deployment holds two, and a surge to 7/s (two
    # replicas' worth) lands on capacity already serving instead of waiting a cold start.
    surge = step_load(2.0, 7.0, 400.0)
    plain = drive(config(), surge, until_s=420)
    spared = drive(config(spare_replicas=1), surge, until_s=420)

    assert plain[399].replicas == 1
    assert spared[399].replicas == 2
    assert "+1 spare" in spared[399].history[-1][3]
    assert max(s.backlog for s in spared[400:]) < max(s.backlog for s in plain[400:])

    # The budget still caps, and idleness still releases every replica.
    assert max(s.replicas for s in drive(config(spare_replicas=3, max_replicas=3), surge, until_s=420)) == 3
    idle = drive(
        config(spare_replicas=1, scale_to_zero_idle_s=60.0, downscale_delay_s=30.0),
        lambda t: 2.0 if t < 100 else 0.0,
        until_s=300,
    )
    assert idle[-1].replicas == 0


@pytest.mark.parametrize(
    ("kv_cache_usage", "running", "expect_up"),
    [
        # The cache holds only 12 of 32 sequences: 12 running + 10 waiting is over a 16-slot target.
        (0.95, 12.0, True),
        # Same queue with room in the cache: 22 requests fit a 36-slot target.
        (0.40, 12.0, False),
    ],
)
def test_kv_cache_pressure_shrinks_the_running_capacity(kv_cache_usage: float, running: float, expect_up: bool) -> None:
    cfg = config(upscale_delay_s=0.0)
    loads = tuple(ReplicaLoad(running, 10.0, kv_cache_usage, 1.0, replica=f"r{i}") for i in range(2))
    obs = Observation(100.0, 2, 2, handle_queued=0.0, ongoing=44.0, replicas=loads)

    decision = decide(PolicyState(), obs, cfg)

    assert (decision.replicas > 2) is expect_up
    if expect_up:
        assert decision.reason.startswith("KV cache 95% full")


def test_cold_start_allowance_scales_a_ramp_earlier_the_longer_replicas_take() -> None:
    def ramp(t: float) -> float:
        return 1.0 + 0.01 * t

    def first_up(cold_start_s: float) -> tuple[float, float]:
        steps = drive(config(cold_start_s=cold_start_s), ramp, until_s=1200)
        time_s, _, _ = first_change(steps)
        queue_from = next((s.time_s for s in steps if s.backlog > 0), math.inf)
        return time_s, queue_from

    slow_s, queue_s = first_up(300.0)
    fast_s, _ = first_up(30.0)

    assert slow_s < fast_s
    # With a long cold start the replica is asked for well before a queue would form.
    assert slow_s < queue_s - 60


def test_the_batch_curve_sees_the_knee_before_the_first_replica_saturates() -> None:
    # A ramp on one replica that never saturated: no measured throughput. Its requests spend
    # longer in a fuller batch (4 s at an empty one, 8 s at a full one), and that curve says
    # where the replica will saturate (MU per second) before it does.
    def ramp(t: float) -> float:
        return 1.0 + 0.006 * t

    saturates_at = (MU - 1.0) / 0.006
    curved = drive(config(cold_start_s=120.0), ramp, until_s=700, slowdown=4.0 / SEQS)
    flat = drive(config(cold_start_s=120.0), ramp, until_s=700)

    (curve_s, _, _), (flat_s, _, _) = first_change(curved), first_change(flat)
    # Asked for at least one cold start before saturation; a flat curve (the same saturation
    # point) leaves the queue view alone, which sees it later.
    assert curve_s <= saturates_at - 120.0 < flat_s
    assert "batch curve" in next(s.reason for s in curved if s.time_s == curve_s)
    # Nobody waits for a slot.
    assert max(s.backlog for s in curved) == 0


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        # On the line 4 + B/8 seconds: a full batch of 32 takes 8 s, so 4 requests per second.
        ([(b, 4.0 + b / 8) for b in (4, 8, 12, 16, 20, 24)], 4.0),
        ([(b, 4.0 + b / 8) for b in (4, 8, 12, 16, 20)], None),  # too few samples
        ([(b, 4.0 + b / 8) for b in (10, 11, 12, 13, 14, 15)], None),  # too narrow a spread
        ([(b, 6.0) for b in (4, 8, 12, 16, 20, 24)], None),  # flat: says nothing about the knee
    ],
)
def test_full_batch_throughput_extrapolates_the_batch_curve(
    samples: list[tuple[float, float]], expected: float | None
) -> None:
    estimate = _full_batch_throughput(samples, SEQS)
    assert estimate == (None if expected is None else pytest.approx(expected))


def test_a_noisy_batch_curve_does_not_bring_the_knee_nearer() -> None:
    exact = [(float(b), 4.0 + b / 8) for b in range(4, 28, 2)]
    noisy = [(b, t + (0.8 if i % 2 else -0.8)) for i, (b, t) in enumerate(exact)]
    estimate = _full_batch_throughput(noisy, SEQS)
    # One standard error off the slope: noise makes the estimate higher (later), never lower.
    assert estimate is not None and estimate > 4.0


@pytest.mark.parametrize(
    ("arrivals", "waiting", "cold_start_s", "expect_up", "reason"),
    [
        # 2 replicas complete 8/s; at 6/s a backlog of 150 drains in 71 s, before a 120 s cold start.
        (6.0, 150.0, 120.0, False, "drains before a new replica could start"),
        # ... but not before a 30 s one.
        (6.0, 150.0, 30.0, True, "backlog of"),
        # At 7.9/s it would take 20 minutes.
        (7.9, 150.0, 120.0, True, "backlog of"),
        # Arrivals beyond the throughput: more replicas whatever the backlog.
        (10.0, 0.0, 120.0, True, "arrivals 10.0/s"),
    ],
)
def test_a_backlog_gets_the_replicas_that_drain_it_within_a_cold_start(
    arrivals: float, waiting: float, cold_start_s: float, expect_up: bool, reason: str
) -> None:
    cfg = config(upscale_delay_s=0.0, cold_start_s=cold_start_s)
    # The throughput was measured and the arrivals are flat; the estimates are fresh.
    state = PolicyState(
        anchor_time=99.0,
        anchor_demand=2 * SEQS + waiting,
        service_per_replica_s=MU,
        arrival_per_s=arrivals,
        arrival_last_per_s=arrivals,
        arrivals=tuple((99.0 - 15 * i, arrivals) for i in range(10))[::-1],
    )
    loads = tuple(ReplicaLoad(SEQS, min(waiting / 2, SEQS), 0.3, MU, replica=f"r{i}") for i in range(2))
    queued = waiting - sum(r.waiting for r in loads)
    obs = Observation(100.0, 2, 2, handle_queued=queued, ongoing=2 * SEQS + waiting, replicas=loads)

    decision = decide(state, obs, cfg)

    assert (decision.replicas > 2) is expect_up, decision.reason
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("upscale_delay_s", "earliest_s", "latest_s"),
    [(0.0, 100.0, 125.0), (45.0, 145.0, 175.0)],
)
def test_upscale_waits_exactly_the_configured_delay(upscale_delay_s: float, earliest_s: float, latest_s: float) -> None:
    steps = drive(config(upscale_delay_s=upscale_delay_s), step_load(2.0, 12.0, 100.0), until_s=300)

    time_s, frm, to = first_change(steps)
    assert (frm, to > frm) == (1, True)
    assert earliest_s <= time_s <= latest_s


def test_every_move_is_in_the_history_with_its_reason() -> None:
    steps = drive(config(), step_load(2.0, 12.0, 100.0), until_s=600)

    history = steps[-1].history
    assert [(frm, to) for _, frm, to, _ in history] == [(frm, to) for _, frm, to in changes(steps)][-10:]
    moves = {s.time_s: s.reason for s in steps}
    assert all(reason and reason == moves[time_s] for time_s, _, _, reason in history)


def test_state_survives_a_json_round_trip() -> None:
    state = PolicyState()
    world = Fluid(1)
    cfg = config()
    for t in range(1, 300):
        decision = decide(state, world.observe(float(t), 12.0 if t > 100 else 2.0, 1.0), cfg)
        world.scale(float(t), decision.replicas)
        state = decision.state

    data = json.loads(json.dumps(state.to_dict()))

    assert PolicyState.from_dict(data) == state
    assert data["history"] and data["reason"]
    assert data["metrics"]["queue_depth_per_replica"] >= 0


def test_scaling_config_rejects_inconsistent_bounds() -> None:
    with pytest.raises(ValidationError, match="exceeds max_replicas"):
        config(min_replicas=5, max_replicas=2)
    with pytest.raises(ValidationError, match="hysteresis"):
        config(upscale_utilization=0.6, downscale_utilization=0.7)


def test_build_app_hands_ray_the_policy_and_leaves_it_the_delays() -> None:
    deployment = DeploymentArgs(
        accelerator=Accelerator.GPU,
        num_replicas=1,
        autoscaling=True,
        min_replicas=1,
        max_replicas=4,
        target_queue_depth=4.0,
        upscale_delay_s=15.0,
        downscale_delay_s=300.0,
        max_ongoing_requests=256,
        max_queued_requests=256,
    )

    rendered = app.autoscaling_config(deployment, max_num_seqs=128)

    assert rendered["policy"]["policy_function"] == POLICY_IMPORT_PATH
    kwargs = ScalingConfig.model_validate(rendered["policy"]["policy_kwargs"])
    assert (kwargs.upscale_delay_s, kwargs.downscale_delay_s) == (15.0, 300.0)
    assert kwargs.cold_start_s == app.COLD_START_S[Accelerator.GPU]
    # Ray's own delays would wait a second time.
    assert rendered["upscale_delay_s"] == rendered["downscale_delay_s"] == rendered["downscale_to_zero_delay_s"] == 0


@pytest.mark.parametrize(
    ("accelerator", "cold_start_seconds", "expected"),
    [("nvidia-l4", None, app.COLD_START_S[Accelerator.GPU]), ("nvidia-l4", 300, 300.0), ("cpu", 20, 20.0)],
)
def test_spec_cold_start_reaches_the_policy_else_the_accelerator_default(
    accelerator: str, cold_start_seconds: int | None, expected: float
) -> None:
    from llmdeploy.operator.api import LLMDeploymentSpec
    from llmdeploy.operator.serveconfig import serving_args

    autoscaling: dict[str, Any] = {"enabled": True}
    if cold_start_seconds is not None:
        autoscaling["coldStartSeconds"] = cold_start_seconds
    spec = LLMDeploymentSpec.model_validate(
        {"model": {"source": "org/m-7B"}, "accelerator": {"type": accelerator}, "autoscaling": autoscaling}
    )
    args = serving_args(spec, name="d", served_model_name="m")

    rendered = app.autoscaling_config(args.deployment, max_num_seqs=args.engine.max_num_seqs)

    assert ScalingConfig.model_validate(rendered["policy"]["policy_kwargs"]).cold_start_s == expected


def test_spec_spare_replicas_reach_the_policy() -> None:
    from llmdeploy.operator.api import LLMDeploymentSpec
    from llmdeploy.operator.serveconfig import serving_args

    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"source": "org/m-7B"},
            "accelerator": {"type": "nvidia-l4"},
            "autoscaling": {"enabled": True, "spareReplicas": 2},
        }
    )
    args = serving_args(spec, name="d", served_model_name="m")

    rendered = app.autoscaling_config(args.deployment, max_num_seqs=args.engine.max_num_seqs)

    assert ScalingConfig.model_validate(rendered["policy"]["policy_kwargs"]).spare_replicas == 2


def test_spec_rejects_a_cold_start_out_of_bounds() -> None:
    from llmdeploy.operator.api import LLMDeploymentSpec

    body = {"model": {"source": "org/m-7B"}, "accelerator": {"type": "nvidia-l4"}}
    with pytest.raises(ValidationError, match=r"cold_?[sS]tart"):
        LLMDeploymentSpec.model_validate({**body, "autoscaling": {"coldStartSeconds": 0}})


# --- the adapter, as Ray calls it -------------------------------------------------------------


def _ray_context(
    policy_state: dict[str, Any], *, now: float, waiting: float, target: int = 2, ray_config: Any = None
) -> Any:
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    deployment = DeploymentID(name="LLMServer:demo", app_name="llm")
    replicas = [ReplicaID(f"replica-{i}", deployment) for i in range(2)]
    per_replica = {
        WAITING_KEY: waiting,
        RUNNING_KEY: float(SEQS),
        KV_CACHE_USAGE_KEY: 0.3,
        FINISHED_RATE_KEY: MU,
    }
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name=deployment.name,
        app_name="llm",
        current_num_replicas=2,
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=lambda: 2 * (SEQS + waiting) + 10.0,
        total_queued_requests=lambda: 10.0,
        aggregated_metrics=lambda: {key: dict.fromkeys(replicas, value) for key, value in per_replica.items()},
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=6,
        policy_state=policy_state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=ray_config or AutoscalingConfig(min_replicas=1, max_replicas=6),
    )


@needs_ray
def test_adapter_reads_a_real_ray_context_and_returns_replicas_and_json_state() -> None:
    policy = QueueDepthPolicy(**config(upscale_delay_s=0.0).model_dump(mode="json"))

    replicas, state = policy(_ray_context({}, now=1000.0, waiting=30.0))

    assert isinstance(replicas, int) and replicas > 2
    assert json.loads(json.dumps(state)) == state
    assert state["reason"].startswith("queue")
    assert state["metrics"]["queue_depth_per_replica"] == pytest.approx((2 * 30 + 10) / 2)
    assert [entry[1:3] for entry in state["history"]] == [[2, replicas]]
    # Ray hands the state back on the next tick; the policy picks up where it left off.
    again, _ = policy(_ray_context(state, now=1001.0, waiting=30.0, target=replicas))
    assert again >= replicas


@needs_ray
def test_ray_deserializes_the_rendered_policy_and_applies_it_without_its_own_delay() -> None:
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig

    deployment = DeploymentArgs(
        accelerator=Accelerator.CPU,
        num_replicas=1,
        autoscaling=True,
        min_replicas=1,
        max_replicas=6,
        target_queue_depth=4.0,
        upscale_delay_s=0.0,
        downscale_delay_s=60.0,
        max_ongoing_requests=2 * SEQS,
        max_queued_requests=64,
    )
    ray_config = AutoscalingConfig(**app.autoscaling_config(deployment, max_num_seqs=SEQS))

    # What the controller does: unpickle the policy (a class: instantiated with policy_kwargs), wrap it.
    policy = _resolve_policy_callable(ray_config.policy)
    wrapped = _apply_autoscaling_config(policy)
    # Ray's wrapper applies the delays of the context's config: the deployment's, as rendered.
    replicas, state = wrapped(_ray_context({}, now=time.time(), waiting=30.0, ray_config=ray_config))

    assert type(policy).__name__ == "QueueDepthPolicy"
    assert replicas > 2  # no upscale delay here, and Ray adds none
    assert "reason" in state and any(key.startswith("__") for key in state)  # ours and Ray's keys


@needs_ray
def test_rays_controller_state_drives_the_policy_from_replica_reports() -> None:
    from ray.serve._private.autoscaling_state import DeploymentAutoscalingState
    from ray.serve._private.common import DeploymentID, ReplicaID, ReplicaMetricReport, TimeStampedValue
    from ray.serve._private.config import DeploymentConfig, ReplicaConfig
    from ray.serve._private.deployment_info import DeploymentInfo
    from ray.serve.config import AutoscalingConfig

    deployment = DeploymentArgs(
        accelerator=Accelerator.CPU,
        num_replicas=1,
        autoscaling=True,
        min_replicas=1,
        max_replicas=4,
        target_queue_depth=2.0,
        upscale_delay_s=0.0,
        downscale_delay_s=60.0,
        max_ongoing_requests=2 * SEQS,
        max_queued_requests=64,
    )
    ray_config = AutoscalingConfig(**app.autoscaling_config(deployment, max_num_seqs=SEQS))
    deployment_id = DeploymentID(name="LLMServer:demo", app_name="llm")
    autoscaling = DeploymentAutoscalingState(deployment_id)
    info = DeploymentInfo(
        deployment_config=DeploymentConfig(autoscaling_config=ray_config),
        replica_config=ReplicaConfig.create("demo.module:Deployment"),
        start_time_ms=0,
        deployer_job_id="",
    )
    assert autoscaling.register(info, 1) == 1
    replica = ReplicaID("replica-0", deployment_id)
    autoscaling.update_running_replica_ids([replica])
    now = time.time()
    stats = {WAITING_KEY: 40.0, RUNNING_KEY: float(SEQS), KV_CACHE_USAGE_KEY: 0.5, FINISHED_RATE_KEY: MU}
    autoscaling.record_request_metrics_for_replica(
        ReplicaMetricReport(
            replica,
            {key: [TimeStampedValue(now - 2, value), TimeStampedValue(now - 1, value)] for key, value in stats.items()},
            now,
        )
    )

    decision = autoscaling.get_decision_num_replicas(1)

    # 32 running + 40 waiting on one replica against 32 + 2 per replica: 3 replicas, within max 4.
    assert decision == 3
