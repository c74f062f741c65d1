"""The queue-depth autoscaling policy of the engine replicas: a pure decision plus a thin Ray adapter.

Ray Serve's built-in policy scales on *ongoing* requests per replica. For an LLM engine that
number mixes requests running in the engine's batch (up to `max_num_seqs`, work a replica does
at full speed) with requests waiting for a slot (latency users feel), and it is not linear in
the replica count: fewer replicas run larger batches, whose steps are slower, so the count per
replica after removing one is more than the arithmetic says (Ray's policy on a batch-sized
target flaps between too few and too many replicas; `benchmarks/autoscaling.py` shows it).
This policy reads what the engines report (`record_autoscaling_stats`: waiting and running
requests, KV-cache usage, completions per second) and the requests queued at handles, and
holds two views of the load:

- **Queue view**: requests in the system against slots. A replica has `max_num_seqs` running
  slots (fewer when the KV cache is the limit: usage above `kv_cache_high_watermark` with
  requests waiting, then what runs is what fits) plus `target_queue_depth` waiting ones.
- **Flow view**, once a saturated replica's completion rate has been measured (replicas with
  requests waiting, after their first minute): arrivals per second (completions plus the growth
  of the requests in the system, which is conservation) against that throughput, loaded to at
  most `upscale_utilization`. Until then, the throughput the **batch curve** predicts: a
  request's seconds in the batch (running / completions, Little's law) grow with the batch, and
  a line through the unsaturated replicas' points, extrapolated to `max_num_seqs`, says where a
  replica saturates before one has. That estimate adds replicas; it never holds one back.

**Cold start.** A replica helps `cold_start_s` after it is asked for, so both views look that
far ahead by the arrivals' trend (a Theil-Sen slope less its error: ramps count, bursts and
noise do not; capped at +50 %). A backlog is not lasting load: it asks for the replicas that
drain it within one cold start, and for none when those already there (or starting) drain it
sooner, since a new one would arrive after it is gone.

**Hysteresis.** Up when the recommendation exceeds the target replicas (starting ones count)
for `upscale_delay_s`, to the smallest recommendation of that window; down only while the load
fits the remaining replicas at `downscale_utilization` for `downscale_delay_s`, to the largest
recommendation of that window (Kubernetes HPA's stabilisation windows); without a measured
throughput at most half the replicas go at once. `spare_replicas` (N+k) are added to both
recommendations, for surges faster than a cold start, at the price of their GPUs all the time.
Scale to zero after `scale_to_zero_idle_s` with nothing in flight or queued; at zero the first
request wakes a replica at once.

`decide(state, observation, config) -> Decision` is the whole policy: pure, no clock, no I/O;
its reason and recent moves travel in the state. `QueueDepthPolicy` is what Ray Serve's
controller calls (`autoscaling_config.policy`): it reads Ray's `AutoscalingContext` into an
`Observation`, calls `decide` and returns `(replicas, policy_state)`. Ray pickles this module
by value into its controller, so it imports nothing from Ray and keeps its types plain.

Ray wraps every policy (`ray.serve.autoscaling_policy._apply_autoscaling_config`) in its own
up/down delays; `build_app` sets those to 0, so the delays here are the only ones. The wrapper
still handles zero replicas itself (with requests queued it asks for one replica without
calling the policy, so a wake-up is one replica, then this policy's sizing once it serves),
and Ray clamps the result to `[min_replicas, max_replicas]`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from llmdeploy.serving.config import ScalingConfig

# Keys of the engine replicas' `record_autoscaling_stats()` (reach the policy as
# `ctx.aggregated_metrics[key][replica_id]`, each a time-weighted mean over Ray's look-back window).
WAITING_KEY: Final = "num_requests_waiting"
RUNNING_KEY: Final = "num_requests_running"
KV_CACHE_USAGE_KEY: Final = "kv_cache_usage"
FINISHED_RATE_KEY: Final = "finished_requests_per_s"
ENGINE_STATS_KEYS: Final = (WAITING_KEY, RUNNING_KEY, KV_CACHE_USAGE_KEY, FINISHED_RATE_KEY)

# Import path for `autoscaling_config.policy.policy_function`.
POLICY_IMPORT_PATH: Final = "llmdeploy.serving.autoscaling:QueueDepthPolicy"
# Gauge the adapter sets from Ray's controller on each decision: requests waiting per replica as
# the policy saw them. The controller runs on the head node, so the head's metrics port serves it
# (Ray prefixes `ray_`), where the operator reads it for `status.queueDepth`: Ray 2.60's Serve
# API declares `autoscaling_detail` but never fills it.
QUEUE_DEPTH_METRIC: Final = "llmdeploy_autoscaling_queue_depth_per_replica"
# Scaling decisions kept in `policy_state["history"]`.
HISTORY_LENGTH: Final = 10
# A replica whose engine has at least this many requests waiting (window mean) is saturated:
# its completion rate is what a replica can do.
_SATURATED_WAITING: Final = 1.0
# Seconds a replica serves before its completion rate counts as its throughput: its first
# full batch has to finish and Ray's look-back window to cover only that.
_WARM_S: Final = 60.0
# Weights of the newest sample in the rate estimates (exponentially weighted means).
_GROWTH_WEIGHT: Final = 0.5
_SERVICE_WEIGHT: Final = 0.3
# Batch samples (running, seconds per request) of unsaturated replicas kept for the batch curve;
# the fewest that make one, and the spread of batch sizes (a share of max_num_seqs) they must cover.
_BATCH_SAMPLES: Final = 16
_BATCH_MIN_SAMPLES: Final = 6
_BATCH_MIN_SPREAD: Final = 0.25
# Arrival samples the trend is fitted over (one per `growth_window_s`), and the fewest that make one.
_TREND_SAMPLES: Final = 10
_TREND_MIN_SAMPLES: Final = 4
_GROWTH_SAMPLES: Final = 3
# The arrival trend counts from this many standard errors above zero.
_TREND_CONFIDENCE: Final = 1.0
# A projection never adds more than this share of the current arrivals (a trend is not a step).
_MAX_LIFT: Final = 0.5

_logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ReplicaLoad:
    """One engine replica's report, averaged over Ray's look-back window."""

    running: float
    waiting: float
    kv_cache_usage: float = 0.0
    finished_per_s: float = 0.0
    # Ray's replica id, to know how long the replica has been serving.
    replica: str = ""


@dataclass(frozen=True)
class Observation:
    """What the controller knows at one decision."""

    time_s: float
    # Replicas serving requests (Ray: `current_num_replicas`).
    ready_replicas: int
    # Replicas asked for, starting ones included (Ray: `target_num_replicas`).
    target_replicas: int
    # Requests queued at handles for a free replica slot (Ray: `total_queued_requests`).
    handle_queued: float
    # Requests at replicas plus queued at handles (Ray: `total_num_requests`); the signal when
    # engines have not reported yet.
    ongoing: float
    replicas: tuple[ReplicaLoad, ...] = ()
    # Ray's replica bounds after target capacity (Ray: `capacity_adjusted_{min,max}_replicas`).
    min_bound: int = 0
    max_bound: int | None = None


@dataclass(frozen=True)
class PolicyState:
    """What the policy carries between decisions (Ray stores it as `policy_state`, a dict)."""

    # When the recommendation first exceeded the target, and the smallest one since.
    up_since: float | None = None
    up_min: int | None = None
    # When it first fell below the target, and the largest one since.
    down_since: float | None = None
    down_max: int | None = None
    # Since when nothing has been in flight or queued.
    idle_since: float | None = None
    # When each serving replica was first seen (its completion rate is a throughput sample only
    # once its first batch has had time to finish).
    first_seen: Mapping[str, float] = field(default_factory=dict)
    # The demand sample that the growth rate is measured from.
    anchor_time: float | None = None
    anchor_demand: float | None = None
    # Requests in the system per second (positive: load is growing), smoothed; arrivals per
    # second, smoothed and the latest sample; requests per second one saturated replica completes.
    growth_per_s: float | None = None
    # The last `_GROWTH_SAMPLES` raw growth samples: growth that persists through all is a trend.
    growths: tuple[float, ...] = ()
    arrival_per_s: float | None = None
    arrival_last_per_s: float | None = None
    service_per_replica_s: float | None = None
    # Until a saturated replica has been measured: (running, seconds per request) of warm,
    # unsaturated replicas, from which the batch curve extrapolates a full batch's throughput.
    batch_samples: tuple[tuple[float, float], ...] = ()
    # Their extrapolated full-batch throughput (requests per second), smoothed; kept once made.
    batch_estimate_per_s: float | None = None
    # Arrival samples (time, per second) of the last `_TREND_SAMPLES` windows, for the trend.
    arrivals: tuple[tuple[float, float], ...] = ()
    reason: str = ""
    # Last scaling moves: (time, from, to, reason).
    history: tuple[tuple[float, int, int, str], ...] = ()
    # What the last decision saw, for status and dashboards.
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped, as Ray keeps it (and any reader of it) expects."""
        return {
            "up_since": self.up_since,
            "up_min": self.up_min,
            "down_since": self.down_since,
            "down_max": self.down_max,
            "idle_since": self.idle_since,
            "first_seen": dict(self.first_seen),
            "anchor_time": self.anchor_time,
            "anchor_demand": self.anchor_demand,
            "growth_per_s": self.growth_per_s,
            "growths": list(self.growths),
            "arrival_per_s": self.arrival_per_s,
            "arrival_last_per_s": self.arrival_last_per_s,
            "service_per_replica_s": self.service_per_replica_s,
            "batch_samples": [list(item) for item in self.batch_samples],
            "batch_estimate_per_s": self.batch_estimate_per_s,
            "arrivals": [list(item) for item in self.arrivals],
            "reason": self.reason,
            "history": [list(item) for item in self.history],
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyState:
        """Read back `to_dict`; unknown keys (Ray's own delay counters) are ignored."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        def count(key: str) -> int | None:
            value = data.get(key)
            return int(value) if isinstance(value, int | float) else None

        history = tuple(
            (float(item[0]), int(item[1]), int(item[2]), str(item[3]))
            for item in data.get("history") or ()
            if isinstance(item, list | tuple) and len(item) == 4
        )

        def pairs(key: str) -> tuple[tuple[float, float], ...]:
            return tuple(
                (float(item[0]), float(item[1]))
                for item in data.get(key) or ()
                if isinstance(item, list | tuple) and len(item) == 2
            )

        metrics = data.get("metrics")
        first_seen = data.get("first_seen")
        return cls(
            up_since=number("up_since"),
            up_min=count("up_min"),
            down_since=number("down_since"),
            down_max=count("down_max"),
            idle_since=number("idle_since"),
            first_seen=(
                {str(k): float(v) for k, v in first_seen.items() if isinstance(v, int | float)}
                if isinstance(first_seen, Mapping)
                else {}
            ),
            anchor_time=number("anchor_time"),
            anchor_demand=number("anchor_demand"),
            growth_per_s=number("growth_per_s"),
            growths=tuple(float(v) for v in data.get("growths") or () if isinstance(v, int | float)),
            arrival_per_s=number("arrival_per_s"),
            arrival_last_per_s=number("arrival_last_per_s"),
            service_per_replica_s=number("service_per_replica_s"),
            batch_samples=pairs("batch_samples"),
            batch_estimate_per_s=number("batch_estimate_per_s"),
            arrivals=pairs("arrivals"),
            reason=str(data.get("reason") or ""),
            history=history,
            metrics=dict(metrics) if isinstance(metrics, Mapping) else {},
        )


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    state: PolicyState


@dataclass(frozen=True)
class _Load:
    running: float
    engine_waiting: float
    handle_queued: float
    kv_cache_usage: float
    finished_per_s: float
    # The replicas with requests waiting in their engine.
    saturated: tuple[ReplicaLoad, ...]
    replicas: tuple[ReplicaLoad, ...] = ()

    @property
    def waiting(self) -> float:
        return self.engine_waiting + self.handle_queued

    @property
    def demand(self) -> float:
        return self.running + self.waiting


def _load(obs: Observation, config: ScalingConfig) -> _Load:
    if obs.replicas:
        return _Load(
            running=sum(r.running for r in obs.replicas),
            engine_waiting=sum(r.waiting for r in obs.replicas),
            handle_queued=obs.handle_queued,
            kv_cache_usage=sum(r.kv_cache_usage for r in obs.replicas) / len(obs.replicas),
            finished_per_s=sum(r.finished_per_s for r in obs.replicas),
            saturated=tuple(r for r in obs.replicas if r.waiting >= _SATURATED_WAITING),
            replicas=obs.replicas,
        )
    # No engine has reported (yet): Ray's own count of requests at replicas, split at the batch size.
    at_replicas = max(0.0, obs.ongoing - obs.handle_queued)
    running = min(at_replicas, float(obs.ready_replicas * config.max_num_seqs))
    return _Load(running, at_replicas - running, obs.handle_queued, 0.0, 0.0, ())


def _seen(state: PolicyState, obs: Observation) -> PolicyState:
    """Record when each reporting replica was first seen; forget the ones that are gone."""
    seen = {r.replica: state.first_seen.get(r.replica, obs.time_s) for r in obs.replicas if r.replica}
    return state if seen == state.first_seen else replace(state, first_seen=seen)


def _ewma(previous: float | None, sample: float, weight: float) -> float:
    return sample if previous is None else (1 - weight) * previous + weight * sample


def _estimate(state: PolicyState, load: _Load, now: float, config: ScalingConfig) -> PolicyState:
    """Update the growth, arrival and service-rate estimates, once per `growth_window_s`."""
    if state.anchor_time is None or state.anchor_demand is None or now < state.anchor_time:
        return replace(state, anchor_time=now, anchor_demand=load.demand)
    elapsed = now - state.anchor_time
    if elapsed < config.growth_window_s:
        return state
    growth = (load.demand - state.anchor_demand) / elapsed
    # Conservation: what arrives either completes or stays in the system.
    arrival = max(0.0, load.finished_per_s + growth)
    service = state.service_per_replica_s
    # A replica that just started has a full batch and nothing finished yet: not a sample.
    rates = [
        r.finished_per_s
        for r in load.saturated
        if r.finished_per_s > 0 and now - state.first_seen.get(r.replica, now) >= _WARM_S
    ]
    if rates:
        service = _ewma(service, sum(rates) / len(rates), _SERVICE_WEIGHT)
    batch: tuple[tuple[float, float], ...] = ()
    estimate = state.batch_estimate_per_s
    if service is None:
        # Little's law per replica: seconds a request spends in the batch = running / completions.
        batch = (
            *state.batch_samples,
            *(
                (r.running, r.running / r.finished_per_s)
                for r in load.replicas
                if r.waiting < _SATURATED_WAITING
                and r.running >= 1
                and r.finished_per_s > 0
                and now - state.first_seen.get(r.replica, now) >= _WARM_S
            ),
        )[-_BATCH_SAMPLES:]
        full = _full_batch_throughput(batch, config.max_num_seqs)
        if full is not None:
            estimate = _ewma(estimate, full, _SERVICE_WEIGHT)
    return replace(
        state,
        anchor_time=now,
        anchor_demand=load.demand,
        growth_per_s=_ewma(state.growth_per_s, growth, _GROWTH_WEIGHT),
        growths=(*state.growths, growth)[-_GROWTH_SAMPLES:],
        arrival_per_s=_ewma(state.arrival_per_s, arrival, _GROWTH_WEIGHT),
        arrival_last_per_s=arrival,
        service_per_replica_s=service,
        batch_samples=batch,
        batch_estimate_per_s=estimate,
        arrivals=(*state.arrivals, (now, arrival))[-_TREND_SAMPLES:],
    )


def _full_batch_throughput(samples: Sequence[tuple[float, float]], max_num_seqs: int) -> float | None:
    """Requests per second a replica would complete with a full batch, from its batch curve.

    A request's time in the batch grows with the batch (a decode step reads more KV cache and
    does more work per step): a least-squares line through (running, seconds per request)
    extrapolated to `max_num_seqs`. None until the samples cover enough batch sizes, or when the
    line does not rise (a flat curve says nothing about the knee).
    """
    n = len(samples)
    if n < _BATCH_MIN_SAMPLES:
        return None
    sizes = [b for b, _ in samples]
    if max(sizes) - min(sizes) < _BATCH_MIN_SPREAD * max_num_seqs:
        return None
    line = _Line.fit(samples)
    # Less one standard error: noise must not make the knee look nearer than it is.
    slope = line.slope - line.slope_error
    if slope <= 0:
        return None
    full = line.mean_y + slope * (max_num_seqs - line.mean_x)
    return max_num_seqs / full


def _trend(samples: Sequence[tuple[float, float]]) -> float:
    """How fast arrivals grow (per second per second), with confidence; 0 with too few samples.

    The median of the slopes between every two samples (Theil-Sen), less one standard error of
    the least-squares fit, never below 0. A ramp's pairs all slope upwards; a burst moves only
    the pairs that touch its few samples, so the median ignores it; Poisson noise stays within
    the error.
    """
    n = len(samples)
    if n < _TREND_MIN_SAMPLES:
        return 0.0
    slopes = sorted(
        (v2 - v1) / (t2 - t1) for i, (t1, v1) in enumerate(samples) for t2, v2 in samples[i + 1 :] if t2 > t1
    )
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    median = slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2
    return max(0.0, median - _TREND_CONFIDENCE * _Line.fit(samples).slope_error)


@dataclass(frozen=True)
class _Line:
    """A least-squares line through (x, y) points, with the standard error of its slope."""

    mean_x: float
    mean_y: float
    slope: float
    slope_error: float

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> _Line:
        """At least three points, not all with the same x (the callers check both)."""
        n = len(points)
        mean_x = sum(x for x, _ in points) / n
        mean_y = sum(y for _, y in points) / n
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
        residual = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in points) / (n - 2)
        return cls(mean_x, mean_y, slope, math.sqrt(residual / spread))


@dataclass(frozen=True)
class _Recommendation:
    up: int
    up_reason: str
    down: int
    down_reason: str
    # Why the queue view's wish for more replicas is not followed, when it is not.
    hold_reason: str = ""


def _recommend(state: PolicyState, load: _Load, obs: Observation, config: ScalingConfig) -> _Recommendation:
    """Replica counts the load asks for: `up` to meet the target, `down` with the hysteresis margin.

    Two views of the same load, both projected one cold start ahead by the arrivals' trend
    (while no backlog exists: a backlog means the jump has happened, and a trend fitted across
    a jump is not one). The queue view counts requests: running ones fill `max_num_seqs` slots
    (fewer when the KV cache is full) and each replica may have `target_queue_depth` waiting.
    The flow view, once a saturated replica's completion rate has been measured, counts
    arrivals per second against that throughput; it also bounds the queue view while a backlog
    exists, since a backlog is not lasting load: it needs the replicas that drain it within one
    cold start, and none if those already there drain it sooner.
    """
    current = max(obs.target_replicas, 1)
    ready = max(obs.ready_replicas, 1)
    depth = config.target_queue_depth
    capacity = float(config.max_num_seqs)
    kv_bound = load.kv_cache_usage >= config.kv_cache_high_watermark and load.engine_waiting > 0
    if kv_bound:
        # The cache, not max_num_seqs, limits the batch: what runs now is what fits.
        capacity = max(1.0, min(capacity, load.running / ready))
    slot = capacity + depth
    excess = max(0.0, load.waiting - depth * current)
    service, arrival = state.service_per_replica_s, state.arrival_per_s
    # Upwards the newest arrival sample counts as soon as it is higher: a surge shows there first.
    arrival_up = max(arrival or 0.0, state.arrival_last_per_s or 0.0)
    lift = 0.0
    if excess == 0 and arrival_up > 0:
        lift = min(_trend(state.arrivals) * config.cold_start_s, _MAX_LIFT * arrival_up)
    # In-system requests grow with arrivals (Little's law), at least in proportion; faster near
    # saturation (batches step slower), which their own growth shows when it persists.
    projected = load.demand * (1 + lift / arrival_up) if arrival_up > 0 else load.demand
    if lift > 0 and len(state.growths) == _GROWTH_SAMPLES:
        persistent = max(0.0, min(state.growths))
        projected = max(projected, load.demand + persistent * config.cold_start_s)
    up = math.ceil(projected / slot)
    per_replica = load.waiting / current
    if kv_bound:
        up_reason = f"KV cache {load.kv_cache_usage:.0%} full with {load.engine_waiting:.0f} waiting"
    elif per_replica > depth:
        up_reason = f"queue {per_replica:.1f}/replica > target {depth:g}"
    else:
        up_reason = f"arrivals +{lift:.1f}/s over a {config.cold_start_s:.0f} s cold start"
    down = math.ceil(projected / (slot * config.downscale_utilization))
    down_reason = f"requests fit {config.downscale_utilization:.0%} of the queue target"
    measured = service is not None
    if not measured and down < obs.target_replicas:
        # Without a measured throughput the running count is all there is, and it understates
        # what fewer replicas would hold (larger batches step slower): at most half go at once.
        down = max(down, math.ceil(obs.target_replicas / 2))
    if service is None:
        # Not measured yet: the batch curve's full-batch throughput, to see the knee coming.
        service = state.batch_estimate_per_s
    if service is None or arrival is None:
        return _Recommendation(up, up_reason, down, down_reason)
    # Arrivals a cold start ahead, plus draining the excess backlog within one cold start.
    ahead = arrival_up + lift
    flow = math.ceil((ahead + excess / config.cold_start_s) / (service * config.upscale_utilization))
    throughput = f"{service:.2f}/s per replica" + ("" if measured else " (batch curve)")
    hold_reason = ""
    if excess > 0 and flow < up and measured:
        up = flow
        if flow <= obs.target_replicas:
            hold_reason = f"backlog of {excess:.0f} drains before a new replica could start"
        else:
            up_reason = f"arrivals {ahead:.1f}/s and a backlog of {excess:.0f} at {throughput}"
    elif flow > up:
        up = flow
        up_reason = f"arrivals {ahead:.1f}/s a cold start ahead at {throughput}"
    by_rate = math.ceil((arrival + lift) / (service * config.downscale_utilization))
    if by_rate > down:
        down = by_rate
        down_reason = f"arrivals {arrival:.1f}/s fit {config.downscale_utilization:.0%} of {throughput}"
    return _Recommendation(up, up_reason, down, down_reason, hold_reason)


def decide(state: PolicyState, obs: Observation, config: ScalingConfig) -> Decision:
    """The replica count for this moment, the reason, and the state for the next decision."""
    now = obs.time_s
    load = _load(obs, config)
    state = _estimate(_seen(state, obs), load, now, config)
    current = obs.target_replicas
    busy = load.demand > 0 or obs.ongoing > 0
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    state = replace(state, idle_since=idle_since)
    ceiling = config.max_replicas if obs.max_bound is None else min(config.max_replicas, obs.max_bound)
    floor = config.min_replicas
    if busy or config.scale_to_zero_idle_s is not None:
        # Zero only through the idle rule below, never while requests are in flight.
        floor = max(floor, 1)
    floor = min(max(floor, obs.min_bound), ceiling)
    rec = _recommend(state, load, obs, config)
    if config.spare_replicas:
        spare = f"; +{config.spare_replicas} spare"
        rec = replace(
            rec,
            up=rec.up + config.spare_replicas,
            up_reason=rec.up_reason + spare,
            down=rec.down + config.spare_replicas,
            down_reason=rec.down_reason + spare,
        )
    up = min(max(rec.up, floor), ceiling)
    down = min(max(rec.down, floor), ceiling)

    def decision(replicas: int, reason: str, **changes: Any) -> Decision:
        new_state = replace(state, reason=reason, metrics=_metrics(load, obs, state), **changes)
        if replicas != current:
            new_state = replace(new_state, history=(*state.history, (now, current, replicas, reason))[-HISTORY_LENGTH:])
        return Decision(replicas, reason, new_state)

    cleared: dict[str, Any] = {"up_since": None, "up_min": None, "down_since": None, "down_max": None}
    if current == 0:
        if busy:
            return decision(max(up, 1), f"wake: {load.demand:.0f} requests at zero replicas", **cleared)
        return decision(0, "idle at zero replicas", **cleared)
    if (
        config.scale_to_zero_idle_s is not None
        and idle_since is not None
        and now - idle_since >= config.scale_to_zero_idle_s
        and obs.min_bound == 0
    ):
        return decision(0, f"no requests for {now - idle_since:.0f} s: scale to zero", **cleared)
    if current < floor:
        return decision(floor, f"below the floor of {floor}", **cleared)
    if current > ceiling:
        return decision(ceiling, f"above max_replicas {ceiling}", **cleared)
    if up > current:
        up_since = state.up_since if state.up_since is not None else now
        up_min = up if state.up_min is None else min(state.up_min, up)
        if now - up_since >= config.upscale_delay_s:
            return decision(up_min, rec.up_reason, **cleared)
        return decision(
            current,
            f"{rec.up_reason}; up to {up} in {up_since + config.upscale_delay_s - now:.0f} s",
            up_since=up_since,
            up_min=up_min,
            down_since=None,
            down_max=None,
        )
    if rec.up > current and current == ceiling:
        return decision(current, f"{rec.up_reason}; held at max_replicas {ceiling} (wants {rec.up})", **cleared)
    if down < current:
        down_since = state.down_since if state.down_since is not None else now
        down_max = down if state.down_max is None else max(state.down_max, down)
        if now - down_since >= config.downscale_delay_s:
            return decision(
                down_max, f"{rec.down_reason} on {down_max} for {config.downscale_delay_s:.0f} s", **cleared
            )
        return decision(
            current,
            f"{rec.down_reason}; down to {down_max} in {down_since + config.downscale_delay_s - now:.0f} s",
            up_since=None,
            up_min=None,
            down_since=down_since,
            down_max=down_max,
        )
    return decision(current, rec.hold_reason or "load within the target band", **cleared)


def _metrics(load: _Load, obs: Observation, state: PolicyState) -> dict[str, float]:
    replicas = max(obs.target_replicas, 1)
    metrics = {
        "queue_depth_per_replica": round(load.waiting / replicas, 3),
        "waiting": round(load.waiting, 3),
        "running": round(load.running, 3),
        "kv_cache_usage": round(load.kv_cache_usage, 4),
    }
    for key, value in (
        ("arrival_per_s", state.arrival_per_s),
        ("service_per_replica_s", state.service_per_replica_s),
        ("growth_per_s", state.growth_per_s),
    ):
        if value is not None:
            metrics[key] = round(value, 4)
    return metrics


class AutoscalingContextLike(Protocol):
    """The parts of `ray.serve.config.AutoscalingContext` the policy reads."""

    @property
    def current_num_replicas(self) -> int: ...
    @property
    def target_num_replicas(self) -> int: ...
    @property
    def running_replicas(self) -> Sequence[Any]: ...
    @property
    def total_num_requests(self) -> float: ...
    @property
    def total_queued_requests(self) -> float: ...
    @property
    def aggregated_metrics(self) -> Mapping[str, Mapping[Any, float]] | None: ...
    @property
    def capacity_adjusted_min_replicas(self) -> int: ...
    @property
    def capacity_adjusted_max_replicas(self) -> int: ...
    @property
    def policy_state(self) -> Mapping[str, Any]: ...
    @property
    def current_time(self) -> float | None: ...


def observe(ctx: AutoscalingContextLike) -> Observation:
    """Ray's context as an `Observation`: engine reports of the running replicas, handle queues."""
    metrics = ctx.aggregated_metrics or {}
    waiting, running = metrics.get(WAITING_KEY, {}), metrics.get(RUNNING_KEY, {})
    kv, finished = metrics.get(KV_CACHE_USAGE_KEY, {}), metrics.get(FINISHED_RATE_KEY, {})
    loads = tuple(
        ReplicaLoad(
            running=float(running.get(replica, 0.0)),
            waiting=float(waiting[replica]),
            kv_cache_usage=float(kv.get(replica, 0.0)),
            finished_per_s=float(finished.get(replica, 0.0)),
            replica=str(getattr(replica, "unique_id", replica)),
        )
        for replica in ctx.running_replicas
        if replica in waiting
    )
    return Observation(
        time_s=ctx.current_time if ctx.current_time is not None else time.time(),
        ready_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        handle_queued=float(ctx.total_queued_requests or 0.0),
        ongoing=float(ctx.total_num_requests or 0.0),
        replicas=loads,
        min_bound=ctx.capacity_adjusted_min_replicas,
        max_bound=ctx.capacity_adjusted_max_replicas,
    )


class QueueDepthPolicy:
    """Ray Serve custom autoscaling policy: `autoscaling_config.policy.policy_function`.

    A class because Ray 2.60 passes `policy_kwargs` only to a class's constructor (a plain
    function gets none); the controller makes one instance per deployment and calls it every
    control-loop tick with an `AutoscalingContext`. The kwargs are a `ScalingConfig`.
    """

    def __init__(self, **policy_kwargs: Any) -> None:
        self.config = ScalingConfig.model_validate(policy_kwargs)
        self._queue_gauge: Any = None

    def __call__(self, ctx: AutoscalingContextLike) -> tuple[int, dict[str, Any]]:
        decision = decide(PolicyState.from_dict(ctx.policy_state), observe(ctx), self.config)
        if decision.replicas != ctx.target_num_replicas:
            _logger.info(
                "autoscaling %s -> %s replicas: %s", ctx.target_num_replicas, decision.replicas, decision.reason
            )
        self._export(ctx, decision.state)
        return decision.replicas, decision.state.to_dict()

    def _export(self, ctx: AutoscalingContextLike, state: PolicyState) -> None:
        """Set the queue-depth gauge; best effort: a metrics failure must never stop scaling."""
        depth = state.metrics.get("queue_depth_per_replica")
        if depth is None:
            return
        try:
            if self._queue_gauge is None:
                # Imported here: the module itself stays free of Ray (Ray pickles it by value).
                from ray.util import metrics

                self._queue_gauge = metrics.Gauge(
                    QUEUE_DEPTH_METRIC,
                    description="Requests waiting per replica (engines plus handles) at the last autoscaling decision.",
                    tag_keys=("deployment", "application"),
                )
            tags = {
                "deployment": str(getattr(ctx, "deployment_name", "")),
                "application": str(getattr(ctx, "app_name", "") or ""),
            }
            self._queue_gauge.set(float(depth), tags=tags)
        except Exception:  # metrics are advisory; the decision stands
            _logger.debug("autoscaling: could not export %s", QUEUE_DEPTH_METRIC, exc_info=True)
