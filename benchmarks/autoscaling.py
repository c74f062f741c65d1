"""Autoscaling policies on simulated GPU replicas: the queue-depth policy vs Ray's default vs an HPA.

A seeded simulation of one LLMDeployment (Llama-3-8B-shaped, bf16, one H100 per replica, the
`balanced` batch preset: 128 sequences, 2 x 128 requests per replica in flight, 256 queued at
the handle before 503, 1 to 8 replicas, queue target 4, delays up 15 s / down 300 s) serving
five arrival traces. What it runs for real:

- **The policies are the code Ray Serve runs.** Ray's controller-side autoscaling state
  (`ray.serve._private.autoscaling_state.DeploymentAutoscalingState`, the object Ray's
  controller keeps per deployment) is fed the metric reports that replicas and handles push
  (every 10 s, samples every fifth of the look-back window, Ray's intervals), builds the
  `AutoscalingContext` itself, wraps the policy in Ray's own delay/bounds logic and decides,
  once per simulated second, on a simulated clock (the `time` module of those two Ray modules
  is replaced by the simulation's clock; nothing else is). "queue-depth" is
  `llmdeploy.serving.autoscaling.QueueDepthPolicy` with exactly the `autoscaling_config`
  that `build_app` renders (`app.autoscaling_config`), so Ray round-trips it through
  cloudpickle as it does in a cluster; "queue-depth+1" is the same with `spareReplicas: 1`
  (the price of headroom, reported beside it). "ray-default" is Ray's own
  `replica_queue_length_autoscaling_policy` with the configuration this project rendered
  before the queue-depth policy: `target_ongoing_requests` = max_num_seqs + targetQueueDepth
  = 132, the spec's delays (up 15 s, down 300 s), Ray's default 30 s look-back.
- **"hpa"** is a Kubernetes HPA on a utilisation metric, written out here (it is not Ray):
  utilisation = the engines' batch occupancy (running / max_num_seqs, the GPU-utilisation
  stand-in), target 0.7, `desired = ceil(current x utilisation / target)` with HPA's 10 %
  tolerance, a 15 s sync period, the metric 60 s behind (a 30 s average ending 60 s ago, the
  usual Prometheus-adapter lag), not-yet-ready replicas counted at 0 % when scaling up (HPA's
  rule), a 300 s scale-down stabilisation window (the largest recommendation of the last 300
  s), and HPA's default rate limits (up: max(100 %, 4 pods) per 15 s). It cannot scale to zero.
- **"oracle-now"** is a reference, not a baseline: it knows the true arrival rate at every
  moment (no metric lag, no delay) and sizes for it at 90 % of a saturated replica, but its
  replicas take their cold start like the others: its SLO is about what reacting can achieve.
- **"clairvoyant"** is a reference too: the same, sized for the highest true rate of the next
  180 s (the longest cold start), so its replicas are ready before their load arrives. Its
  replica-seconds are what meeting the SLO costs with perfect foresight: the goals are checked
  for it as well, to show which of them foresight alone can meet.

Traces (one hour or 50 minutes each, Poisson arrivals, log-normal prompt and output lengths):
a step surge, a compressed day (sine-squared ramp), bursts of long-context requests, an idle
gap then a burst, and the same with scale to zero. Every run starts with the replicas its
first rate needs.

Replicas: a cold start of 60-180 s each (uniform, seeded; every policy's n-th new replica draws
the same one; the GPU stays allocated while it starts); the service time comes from the H100
cost model in `benchmarks/h100.py` (prefill time by the tokens admitted in a step, decode step
time by batch size, linear between the measured points and beyond 64 on the 32->64 slope; its
eager decode times are an upper bound for vLLM and are used as they are). Continuous batching
up to max_num_seqs, FCFS admission while the KV cache has room (440k tokens: 0.9 x 80 GiB less
16 GB of weights and 3 GB of activations, at 128 KiB per token), vLLM-style recompute
preemption when it overflows. The router sends a request to the less loaded of two random ready
replicas with a free slot, else it queues at the handle; a stopped replica drains for Ray's 20
s graceful-shutdown timeout and aborts what is left. Time advances in 0.25 s steps.

Reported per trace and policy: the fraction of requests whose queue wait (arrival to the start
of prefill; shed and aborted requests count as misses) is within the 2 s SLO, p95 wait,
replica-seconds (GPU cost, starting replicas included), scale events (changes of the target),
the seconds from the surge to enough ready capacity (replicas for the new rate at a saturated
replica's throughput, measured on the same simulator), and shed requests.

**Equal SLO attainment.** Ray's policy is also swept over `target_ongoing_requests` (16 to
132, `RAY_TARGETS`). "ray-tuned" is the one value that is SLO-optimal over all traces together
(the most requests within the SLO; a per-trace value would know the trace). The cost goal
compares, per trace, against the cheapest swept target whose SLO is at least ours ("Ray at
equal SLO"); where no target reaches ours, against Ray's best SLO, and says so. Goals: the
queue-depth policy meets the SLO for >= 99 % of requests on every trace, and uses <= 85 % of
the replica-seconds of Ray's policy at equal SLO, with no more scale events than it.

    .venv/bin/python benchmarks/autoscaling.py [--seed 7] [--traces step-surge,bursts]

Writes benchmarks/results/autoscaling.json and benchmarks/results/autoscaling-<trace>.png
(load, queue, ready replicas and SLO misses over time, a line per policy; needs matplotlib,
in the dev extra).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import functools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h100
from results import RESULTS, shown, table, write

from llmdeploy.serving import app
from llmdeploy.serving.autoscaling import FINISHED_RATE_KEY, KV_CACHE_USAGE_KEY, RUNNING_KEY, WAITING_KEY
from llmdeploy.serving.config import Accelerator, DeploymentArgs

REPO = Path(__file__).resolve().parents[1]

DT_S = 0.25
DECISION_PERIOD_S = 1.0
SLO_WAIT_S = 2.0
# Ray Serve's report cadence (RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S and
# the record interval factor), and its graceful-shutdown timeout.
PUSH_INTERVAL_S = 10.0
RECORD_FACTOR = 0.2
GRACEFUL_SHUTDOWN_S = 20.0
COLD_START_RANGE_S = (60.0, 180.0)
TIMELINE_STEP_S = 10.0
# The JSON keeps the timelines at a minute's resolution (the plots use every step).
JSON_TIMELINE_EVERY = 6
# Ray's `target_ongoing_requests` values swept for the tuned baseline and the equal-SLO comparison
# (132 is the batch plus the queue target, "ray-default").
RAY_TARGETS = (16.0, 24.0, 32.0, 40.0, 48.0, 64.0, 96.0, 132.0)
# The wait a shed or aborted request counts with in percentiles (it never started).
SHED_WAIT_S = 1e6


# --- the deployment and its service-time model ------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """Prefill and decode-step times of one H100 replica, from the measured cost model."""

    prefill_tokens: tuple[float, ...]
    prefill_s: tuple[float, ...]
    decode_batch: tuple[float, ...]
    decode_s: tuple[float, ...]

    @classmethod
    def h100(cls) -> CostModel:
        prefill = sorted(h100.PREFILL_MS.items())
        decode = sorted(h100.DECODE_STEP_MS.items())
        return cls(
            tuple(float(t) for t, _ in prefill),
            tuple(ms / 1000 for _, ms in prefill),
            tuple(float(b) for b, _ in decode),
            tuple(ms / 1000 for _, ms in decode),
        )

    def prefill_time(self, tokens: float) -> float:
        xs, ys = self.prefill_tokens, self.prefill_s
        if tokens <= xs[0]:
            return ys[0]
        if tokens >= xs[-1]:
            return ys[-1] + (tokens - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(np.interp(tokens, xs, ys))

    def decode_step(self, batch: int) -> float:
        xs, ys = self.decode_batch, self.decode_s
        if batch >= xs[-1]:
            return ys[-1] + (batch - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(np.interp(batch, xs, ys))


@dataclass(frozen=True)
class Deployment:
    max_num_seqs: int = 128
    max_ongoing: int = 256
    max_queued: int = 256
    kv_tokens: float = 440_000.0
    target_queue_depth: float = 4.0
    min_replicas: int = 1
    max_replicas: int = 8
    upscale_delay_s: float = 15.0
    downscale_delay_s: float = 300.0
    scale_to_zero_idle_s: float | None = None

    def args(self) -> DeploymentArgs:
        """The serving contract's deployment arguments, as the operator renders them."""
        return DeploymentArgs(
            accelerator=Accelerator.GPU,
            ray_accelerator_type="H100",
            num_replicas=self.min_replicas,
            autoscaling=True,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            target_queue_depth=self.target_queue_depth,
            upscale_delay_s=self.upscale_delay_s,
            downscale_delay_s=self.downscale_delay_s,
            scale_to_zero_idle_s=self.scale_to_zero_idle_s,
            max_ongoing_requests=self.max_ongoing,
            max_queued_requests=self.max_queued,
        )


# --- traces -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Request sizes: log-normal prompt and output token counts (medians, log-spread)."""

    prompt_median: float = 600.0
    output_median: float = 180.0
    sigma_prompt: float = 0.8
    sigma_output: float = 0.7

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = np.clip(rng.lognormal(math.log(self.prompt_median), self.sigma_prompt, n), 16, 7000)
        output = np.clip(rng.lognormal(math.log(self.output_median), self.sigma_output, n), 8, 1024)
        return prompt.round(), output.round()


LONG_CONTEXT = Mix(prompt_median=4500.0, output_median=200.0, sigma_prompt=0.3)


@dataclass(frozen=True)
class Segment:
    """Arrivals from `start_s` on: a constant rate, or a sine-squared day between two rates."""

    start_s: float
    rate: float
    peak: float | None = None
    period_s: float | None = None
    mix: Mix = field(default_factory=Mix)


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: float
    segments: tuple[Segment, ...]
    description: str
    # The surge whose time-to-capacity is reported: (time, the rate after it).
    surge: tuple[float, float] | None = None
    bursts: tuple[tuple[float, float, float], ...] = ()  # (start, length, extra rate) of LONG_CONTEXT
    scale_to_zero_idle_s: float | None = None

    def segment_at(self, t: float) -> Segment:
        starts = [s.start_s for s in self.segments]
        return self.segments[max(0, bisect.bisect_right(starts, t) - 1)]

    def rate(self, t: float) -> float:
        seg = self.segment_at(t)
        if seg.peak is None or seg.period_s is None:
            return seg.rate
        return seg.rate + (seg.peak - seg.rate) * math.sin(math.pi * (t - seg.start_s) / seg.period_s) ** 2

    def total_rate(self, t: float) -> float:
        """Arrivals per second at `t`, bursts included."""
        return self.rate(t) + sum(rate for start, length, rate in self.bursts if start <= t < start + length)


def make_traces(rng: np.random.Generator) -> list[Trace]:
    bursts = []
    t = 240.0
    while t < 3300:
        bursts.append((t, float(rng.uniform(20, 45)), 6.0))
        t += float(rng.uniform(240, 480))
    return [
        Trace(
            "step-surge",
            3600,
            (Segment(0, 5.0), Segment(900, 12.0), Segment(2700, 5.0)),
            "5 req/s, a step to 12 req/s at 15 min for 30 min, back to 5",
            surge=(900.0, 12.0),
        ),
        Trace(
            "diurnal",
            3600,
            (Segment(0, 1.0, peak=24.0, period_s=3600),),
            "a compressed day: 1 req/s rising to 24 req/s at 30 min and back (sine squared)",
        ),
        Trace(
            "bursts",
            3600,
            (Segment(0, 8.0),),
            "8 req/s with 20-45 s bursts of +6 req/s long-context requests (4.5k-token prompts) every 4-8 min",
            bursts=tuple(bursts),
        ),
        Trace(
            "idle-gap-burst",
            3000,
            (Segment(0, 6.0), Segment(600, 0.0), Segment(2100, 14.0)),
            "6 req/s for 10 min, 25 min idle, then 14 req/s for 15 min (floor 1 replica)",
            surge=(2100.0, 14.0),
        ),
        Trace(
            "idle-gap-burst-zero",
            3000,
            (Segment(0, 6.0), Segment(600, 0.0), Segment(2100, 14.0)),
            "the same with scale to zero after 10 idle minutes",
            surge=(2100.0, 14.0),
            scale_to_zero_idle_s=600.0,
        ),
    ]


@dataclass
class Requests:
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray

    @classmethod
    def generate(cls, trace: Trace, rng: np.random.Generator) -> Requests:
        times: list[np.ndarray] = []
        prompts: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        steps = int(trace.duration_s / DT_S)
        for i in range(steps):
            t0 = i * DT_S
            seg = trace.segment_at(t0)
            n = rng.poisson(trace.rate(t0) * DT_S)
            extra = sum(rate for start, length, rate in trace.bursts if start <= t0 < start + length)
            m = rng.poisson(extra * DT_S) if extra else 0
            for count, mix in ((n, seg.mix), (m, LONG_CONTEXT)):
                if count:
                    times.append(t0 + rng.uniform(0, DT_S, count))
                    p, o = mix.sample(rng, count)
                    prompts.append(p)
                    outputs.append(o)
        arrival = np.concatenate(times)
        order = np.argsort(arrival, kind="stable")
        return cls(arrival[order], np.concatenate(prompts)[order], np.concatenate(outputs)[order])


# --- replicas ---------------------------------------------------------------------------------


class Replica:
    """One vLLM engine: FCFS waiting queue, continuous batching, KV-cache admission."""

    def __init__(self, rid: str, ready_at: float, started_at: float, deployment: Deployment) -> None:
        self.rid = rid
        self.started_at = started_at
        self.ready_at = ready_at
        self.deployment = deployment
        self.stopping_at: float | None = None
        self.waiting: deque[int] = deque()
        self.run_ids = np.empty(0, dtype=np.int64)
        self.run_left = np.empty(0)
        self.run_ctx = np.empty(0)
        self.debt_s = 0.0
        self.finished = 0
        self.report_phase = 0.0

    @property
    def ongoing(self) -> int:
        return len(self.waiting) + len(self.run_ids)

    @property
    def kv_used(self) -> float:
        return float(self.run_ctx.sum())

    def step(self, t: float, reqs: Requests, admit: np.ndarray, finish: np.ndarray, cost: CostModel) -> None:
        dep = self.deployment
        budget = DT_S - self.debt_s
        self.debt_s = 0.0
        kv = self.kv_used
        new_ids: list[int] = []
        tokens = 0.0
        while self.waiting and len(self.run_ids) + len(new_ids) < dep.max_num_seqs:
            rid = self.waiting[0]
            need = reqs.prompt[rid]
            if kv + need > dep.kv_tokens:
                break
            self.waiting.popleft()
            new_ids.append(rid)
            kv += need
            tokens += need
            if np.isnan(admit[rid]):
                admit[rid] = max(t, reqs.arrival[rid])
        if new_ids:
            ids = np.asarray(new_ids, dtype=np.int64)
            self.run_ids = np.concatenate((self.run_ids, ids))
            self.run_left = np.concatenate((self.run_left, reqs.output[ids].astype(float)))
            self.run_ctx = np.concatenate((self.run_ctx, reqs.prompt[ids].astype(float)))
            budget -= cost.prefill_time(tokens)
        if budget <= 0:
            self.debt_s = -budget
            return
        if not len(self.run_ids):
            return
        steps = budget / cost.decode_step(len(self.run_ids))
        self.run_left -= steps
        self.run_ctx += np.minimum(steps, self.run_left + steps)
        done = self.run_left <= 0
        if done.any():
            finish[self.run_ids[done]] = t + DT_S
            self.finished += int(done.sum())
            keep = ~done
            self.run_ids, self.run_left, self.run_ctx = self.run_ids[keep], self.run_left[keep], self.run_ctx[keep]
        # Recompute preemption: the newest sequences go back to the head of the queue.
        while len(self.run_ids) and self.run_ctx.sum() > dep.kv_tokens:
            rid = int(self.run_ids[-1])
            self.waiting.appendleft(rid)
            self.run_ids, self.run_left, self.run_ctx = self.run_ids[:-1], self.run_left[:-1], self.run_ctx[:-1]

    def abort_all(self) -> list[int]:
        left = list(self.waiting) + [int(r) for r in self.run_ids]
        self.waiting.clear()
        self.run_ids = np.empty(0, dtype=np.int64)
        self.run_left = np.empty(0)
        self.run_ctx = np.empty(0)
        return left


# --- controllers ------------------------------------------------------------------------------


class Cluster(Protocol):
    """What a controller may read: the replicas and the handle queue."""

    replicas: list[Replica]
    handle_queue: deque[int]

    def ready(self) -> list[Replica]: ...
    def target(self) -> int: ...


class Controller(Protocol):
    name: str

    def observe(self, t: float, cluster: Cluster) -> None: ...
    def decide(self, t: float, cluster: Cluster) -> int: ...
    def on_ready(self, cluster: Cluster) -> None: ...
    def on_stopped(self, replica: Replica) -> None: ...


class SimClock:
    """Stands in for the `time` module inside Ray's autoscaling modules."""

    now = 0.0

    @classmethod
    def time(cls) -> float:
        return cls.now

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


@contextlib.contextmanager
def ray_on_sim_clock() -> Iterator[None]:
    from ray.serve import autoscaling_policy
    from ray.serve._private import autoscaling_state

    # The policy logs each move to Ray's logger (the controller's log in a cluster); not here.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    saved = autoscaling_state.time, autoscaling_policy.time
    autoscaling_state.time = SimClock  # type: ignore[assignment]
    autoscaling_policy.time = SimClock  # type: ignore[assignment]
    try:
        yield
    finally:
        autoscaling_state.time, autoscaling_policy.time = saved


class RayServeController:
    """Ray's controller-side autoscaling state for one deployment, fed the pushes Ray sends."""

    def __init__(self, name: str, autoscaling_config: dict[str, Any], reports_engine_stats: bool) -> None:
        from ray.serve._private.autoscaling_state import DeploymentAutoscalingState
        from ray.serve._private.common import DeploymentID
        from ray.serve._private.config import DeploymentConfig, ReplicaConfig
        from ray.serve._private.deployment_info import DeploymentInfo
        from ray.serve.config import AutoscalingConfig

        self.name = name
        self.config = AutoscalingConfig(**autoscaling_config)
        self.deployment_id = DeploymentID(name="LLMServer:sim", app_name="llm")
        self.state = DeploymentAutoscalingState(self.deployment_id)
        info = DeploymentInfo(
            deployment_config=DeploymentConfig(autoscaling_config=self.config),
            replica_config=ReplicaConfig.create("sim.module:Deployment"),
            start_time_ms=0,
            deployer_job_id="",
        )
        self.initial = self.state.register(info, self.config.initial_replicas or self.config.min_replicas)
        self.reports_engine_stats = reports_engine_stats
        self.record_interval = min(self.config.look_back_period_s * RECORD_FACTOR, self.config.metrics_interval_s)
        self._ids: dict[str, Any] = {}
        # Samples not yet pruned: per replica (engine stats) and at the handle (queued, running per replica).
        self._replica_samples: dict[str, dict[str, list[Any]]] = {}
        self._handle_queued: list[Any] = []
        self._handle_running: dict[str, list[Any]] = {}
        self._next_record = 0.0
        self._next_handle_push = PUSH_INTERVAL_S * 0.37
        self._last_finished: dict[str, tuple[int, float]] = {}
        self.decisions: list[tuple[float, int, int, str]] = []

    def _replica_id(self, rid: str) -> Any:
        from ray.serve._private.common import ReplicaID

        if rid not in self._ids:
            self._ids[rid] = ReplicaID(rid, self.deployment_id)
        return self._ids[rid]

    def on_ready(self, cluster: Cluster) -> None:
        self.state.update_running_replica_ids([self._replica_id(r.rid) for r in cluster.ready()])

    def on_stopped(self, replica: Replica) -> None:
        self.state.on_replica_stopped(self._replica_id(replica.rid))
        self._replica_samples.pop(replica.rid, None)
        self._handle_running.pop(self._replica_id(replica.rid).to_full_id_str(), None)

    def observe(self, t: float, cluster: Cluster) -> None:
        from ray.serve._private.common import (
            RUNNING_REQUESTS_KEY,
            DeploymentHandleSource,
            HandleMetricReport,
            ReplicaMetricReport,
            TimeStampedValue,
        )

        look_back = self.config.look_back_period_s
        ready = cluster.ready()
        scaled_to_zero_push = not ready and cluster.handle_queue and not self._handle_queued
        if t >= self._next_record or scaled_to_zero_push:
            self._next_record = t + self.record_interval
            self._handle_queued.append(TimeStampedValue(t, float(len(cluster.handle_queue))))
            for r in ready:
                key = self._replica_id(r.rid).to_full_id_str()
                self._handle_running.setdefault(key, []).append(TimeStampedValue(t, float(r.ongoing)))
                if self.reports_engine_stats:
                    prev_count, prev_t = self._last_finished.get(r.rid, (r.finished, r.ready_at))
                    rate = (r.finished - prev_count) / (t - prev_t) if t > prev_t else 0.0
                    self._last_finished[r.rid] = (r.finished, t)
                    values = {
                        WAITING_KEY: float(len(r.waiting)),
                        RUNNING_KEY: float(len(r.run_ids)),
                        KV_CACHE_USAGE_KEY: r.kv_used / r.deployment.kv_tokens,
                        FINISHED_RATE_KEY: rate,
                    }
                    samples = self._replica_samples.setdefault(r.rid, {})
                    for k, v in values.items():
                        samples.setdefault(k, []).append(TimeStampedValue(t, v))
        for r in ready:
            if self.reports_engine_stats and t >= r.report_phase:
                r.report_phase = t + PUSH_INTERVAL_S
                samples = self._replica_samples.get(r.rid, {})
                for series in samples.values():
                    series[:] = [p for p in series if p.timestamp >= t - look_back]
                if samples:
                    self.state.record_request_metrics_for_replica(
                        ReplicaMetricReport(self._replica_id(r.rid), {k: list(v) for k, v in samples.items()}, t)
                    )
        if t >= self._next_handle_push or scaled_to_zero_push:
            self._next_handle_push = t + PUSH_INTERVAL_S
            self._handle_queued[:] = [p for p in self._handle_queued if p.timestamp >= t - look_back]
            for series in self._handle_running.values():
                series[:] = [p for p in series if p.timestamp >= t - look_back]
            self.state.record_request_metrics_for_handle(
                HandleMetricReport(
                    deployment_id=self.deployment_id,
                    handle_id="ingress-handle",
                    actor_id="ingress",
                    handle_source=DeploymentHandleSource.REPLICA,
                    queued_requests=list(self._handle_queued),
                    metrics={RUNNING_REQUESTS_KEY: {k: list(v) for k, v in self._handle_running.items() if v}},
                    timestamp=t,
                )
            )

    def decide(self, t: float, cluster: Cluster) -> int:
        current = cluster.target()
        decision = self.state.get_decision_num_replicas(current)
        if decision != current:
            reason = str((self.state._policy_state or {}).get("reason", ""))
            if not cluster.ready() and decision > current:
                # Ray's cold-start path: requests at zero running replicas get one without the policy.
                reason = "Ray wakes a replica for queued requests (the policy is not called)"
            self.decisions.append((t, current, decision, reason))
            if decision > current:
                self.state.record_scale_up()
            else:
                self.state.record_scale_down()
        return int(decision)


class HPAController:
    """A Kubernetes HPA on batch occupancy, with a lagging metric (see the module docstring)."""

    name = "hpa"
    target_utilisation = 0.7
    tolerance = 0.1
    sync_s = 15.0
    lag_s = 60.0
    average_s = 30.0
    down_window_s = 300.0

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.initial = deployment.min_replicas
        self.samples: deque[tuple[float, float]] = deque()
        self.recommendations: deque[tuple[float, int]] = deque()
        self.next_sync = 0.0
        self.decisions: list[tuple[float, int, int, str]] = []

    def on_ready(self, cluster: Cluster) -> None:
        pass

    def on_stopped(self, replica: Replica) -> None:
        pass

    def observe(self, t: float, cluster: Cluster) -> None:
        ready = cluster.ready()
        if ready and (not self.samples or t - self.samples[-1][0] >= 1.0):
            occupancy = sum(len(r.run_ids) for r in ready) / (len(ready) * self.deployment.max_num_seqs)
            self.samples.append((t, occupancy))
        while self.samples and self.samples[0][0] < t - self.lag_s - self.average_s - 5:
            self.samples.popleft()

    def decide(self, t: float, cluster: Cluster) -> int:
        current = cluster.target()
        if t < self.next_sync:
            return current
        self.next_sync = t + self.sync_s
        window = [u for ts, u in self.samples if t - self.lag_s - self.average_s <= ts <= t - self.lag_s]
        if not window:
            return current
        ready = len(cluster.ready())
        utilisation = sum(window) / len(window)
        ratio = utilisation / self.target_utilisation
        if abs(ratio - 1) <= self.tolerance:
            recommended = current
        else:
            if ratio > 1 and current > ready:
                # Pods that are not ready yet count as 0 % when scaling up.
                ratio = utilisation * ready / current / self.target_utilisation
            recommended = math.ceil(current * ratio)
        recommended = min(max(recommended, self.deployment.min_replicas, 1), self.deployment.max_replicas)
        self.recommendations.append((t, recommended))
        while self.recommendations and self.recommendations[0][0] < t - self.down_window_s:
            self.recommendations.popleft()
        if recommended > current:
            desired = min(recommended, max(2 * current, current + 4))
        else:
            desired = max(r for _, r in self.recommendations)
            desired = min(desired, current)
        if desired != current:
            self.decisions.append((t, current, desired, f"utilisation {utilisation:.2f} vs {self.target_utilisation}"))
        return desired


class OracleController:
    """A reference, not a baseline: knows the true arrival rate now (no metric lag, no delay).

    It sizes for the current rate at 90 % of a saturated replica's throughput and moves at once,
    so its SLO is what reacting can achieve when every new replica still takes its cold start:
    an upper bound for any policy that cannot see the future.
    """

    name = "oracle-now"

    def __init__(self, trace: Trace, deployment: Deployment, throughput: float) -> None:
        self.trace = trace
        self.deployment = deployment
        self.throughput = throughput
        self.initial = deployment.min_replicas
        self.decisions: list[tuple[float, int, int, str]] = []

    def on_ready(self, cluster: Cluster) -> None:
        pass

    def on_stopped(self, replica: Replica) -> None:
        pass

    def observe(self, t: float, cluster: Cluster) -> None:
        pass

    def rate(self, t: float) -> float:
        return self.trace.total_rate(t)

    def decide(self, t: float, cluster: Cluster) -> int:
        rate = self.rate(t)
        floor = 0 if self.deployment.scale_to_zero_idle_s is not None and rate == 0 else self.deployment.min_replicas
        busy = cluster.handle_queue or any(r.ongoing for r in cluster.replicas)
        desired = max(math.ceil(rate / (0.9 * self.throughput)), floor, 1 if busy else 0)
        return min(desired, self.deployment.max_replicas)


class ClairvoyantController(OracleController):
    """A reference, not a baseline: sees the arrival rate one longest cold start ahead.

    It sizes for the highest true rate of the next 180 s, so every replica it asks for is ready
    before its load arrives: what meeting the SLO costs with perfect foresight, and so a lower
    bound on the replica-seconds of any policy at that SLO.
    """

    name = "clairvoyant"

    def rate(self, t: float) -> float:
        ahead = np.arange(t, t + COLD_START_RANGE_S[1] + DT_S, DT_S)
        return max(self.trace.total_rate(float(x)) for x in ahead)


# --- the simulation ---------------------------------------------------------------------------


@dataclass
class SimCluster:
    deployment: Deployment
    cost: CostModel
    rng: np.random.Generator
    # Cold starts come from their own stream, so that every policy's n-th new replica takes the
    # same time to start, whatever the router drew before (common random numbers).
    starts: np.random.Generator
    replicas: list[Replica] = field(default_factory=list)
    stopping: list[Replica] = field(default_factory=list)
    handle_queue: deque[int] = field(default_factory=deque)
    replica_seconds: float = 0.0
    next_id: int = 0

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready_at <= SimClock.now]

    def target(self) -> int:
        return len(self.replicas)

    def scale_to(self, t: float, n: int, controller: Controller, aborted: list[int]) -> None:
        while len(self.replicas) < n:
            self.next_id += 1
            cold = float(self.starts.uniform(*COLD_START_RANGE_S))
            replica = Replica(f"r{self.next_id:04d}", t + cold, t, self.deployment)
            replica.report_phase = t + cold + float(self.starts.uniform(0, PUSH_INTERVAL_S))
            self.replicas.append(replica)
        while len(self.replicas) > n:
            # Ray stops replicas that are still starting first, then the least loaded.
            starting = [r for r in self.replicas if r.ready_at > t]
            victim = (
                max(starting, key=lambda r: r.ready_at) if starting else min(self.replicas, key=lambda r: r.ongoing)
            )
            self.replicas.remove(victim)
            self.replica_seconds += t - victim.started_at
            if victim.ready_at > t:
                continue
            victim.stopping_at = t
            self.stopping.append(victim)
            controller.on_ready(self)
            controller.on_stopped(victim)

    def dispatch(self) -> None:
        ready = [r for r in self.ready() if r.ongoing < self.deployment.max_ongoing]
        while self.handle_queue and ready:
            if len(ready) == 1:
                choice = ready[0]
            else:
                a, b = self.rng.choice(len(ready), 2, replace=False)
                choice = ready[a] if ready[a].ongoing <= ready[b].ongoing else ready[b]
            choice.waiting.append(self.handle_queue.popleft())
            if choice.ongoing >= self.deployment.max_ongoing:
                ready.remove(choice)


@dataclass
class RunResult:
    policy: str
    trace: str
    slo_fraction: float
    p95_wait_s: float
    replica_seconds: float
    scale_events: int
    surge_to_capacity_s: float | None
    shed: int
    aborted: int
    max_replicas: int
    timeline: dict[str, list[float]]
    decisions: list[tuple[float, int, int, str]]

    def row(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "policy": self.policy,
            "slo_%": round(100 * self.slo_fraction, 2),
            # Shed or aborted requests past the 95th percentile: they never started.
            "p95_wait_s": "shed" if self.p95_wait_s >= SHED_WAIT_S else round(self.p95_wait_s, 2),
            "replica_s": round(self.replica_seconds),
            "scale_events": self.scale_events,
            "surge_to_capacity_s": "-" if self.surge_to_capacity_s is None else round(self.surge_to_capacity_s),
            "shed": self.shed,
            "max_replicas": self.max_replicas,
        }


def simulate(
    trace: Trace,
    reqs: Requests,
    controller: Controller,
    deployment: Deployment,
    cost: CostModel,
    seed: int,
    needed_replicas: int | None,
    warm_replicas: int = 1,
) -> RunResult:
    rng = np.random.default_rng(seed)
    n = len(reqs.arrival)
    admit = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    shed = np.zeros(n, dtype=bool)
    aborted: list[int] = []
    cluster = SimCluster(deployment, cost, rng, np.random.default_rng([seed, 1]))
    SimClock.now = 0.0
    # Every policy starts warm, with the replicas the first arrival rate needs.
    initial = max(int(getattr(controller, "initial", deployment.min_replicas)), warm_replicas)
    cluster.scale_to(0.0, initial, controller, aborted)
    for r in cluster.replicas:
        r.ready_at = 0.0  # the run starts with its initial replicas serving
        r.report_phase = float(rng.uniform(0, PUSH_INTERVAL_S))
    controller.on_ready(cluster)
    next_arrival = 0
    next_decision = DECISION_PERIOD_S
    ready_count = len(cluster.ready())
    timeline: dict[str, list[float]] = {"t": [], "rate": [], "ready": [], "target": [], "waiting": []}
    next_timeline = 0.0
    surge_ready_at: float | None = None
    scale_events = 0
    max_target = cluster.target()
    steps = int(trace.duration_s / DT_S)
    for i in range(steps):
        t = i * DT_S
        SimClock.now = t
        end = t + DT_S
        while next_arrival < n and reqs.arrival[next_arrival] < end:
            if len(cluster.handle_queue) >= deployment.max_queued:
                shed[next_arrival] = True
            else:
                cluster.handle_queue.append(next_arrival)
            next_arrival += 1
        ready = cluster.ready()
        if len(ready) != ready_count:
            ready_count = len(ready)
            controller.on_ready(cluster)
        cluster.dispatch()
        for r in ready:
            r.step(t, reqs, admit, finish, cost)
        for r in list(cluster.stopping):
            r.step(t, reqs, admit, finish, cost)
            if not r.ongoing or t - (r.stopping_at or t) >= GRACEFUL_SHUTDOWN_S:
                aborted.extend(r.abort_all())
                cluster.stopping.remove(r)
                cluster.replica_seconds += t - (r.stopping_at or t)
        controller.observe(end, cluster)
        if end >= next_decision:
            next_decision += DECISION_PERIOD_S
            SimClock.now = end
            desired = controller.decide(end, cluster)
            if desired != cluster.target():
                scale_events += 1
                cluster.scale_to(end, desired, controller, aborted)
                max_target = max(max_target, desired)
        surging = trace.surge is not None and needed_replicas and surge_ready_at is None and t >= trace.surge[0]
        if surging and len(cluster.ready()) >= (needed_replicas or 0):
            surge_ready_at = t - (trace.surge or (0.0, 0.0))[0]
        if t >= next_timeline:
            next_timeline += TIMELINE_STEP_S
            timeline["t"].append(t)
            timeline["rate"].append(round(trace.total_rate(t), 2))
            timeline["ready"].append(len(cluster.ready()))
            timeline["target"].append(cluster.target())
            timeline["waiting"].append(len(cluster.handle_queue) + sum(len(r.waiting) for r in cluster.replicas))
    end_t = steps * DT_S
    for r in cluster.replicas:
        cluster.replica_seconds += end_t - r.started_at
    for r in cluster.stopping:
        cluster.replica_seconds += end_t - (r.stopping_at or end_t)
    wait = np.where(np.isnan(admit), end_t - reqs.arrival, admit - reqs.arrival)
    wait[shed] = np.inf
    if aborted:
        wait[np.asarray(aborted, dtype=np.int64)] = np.inf
    # SLO misses by arrival time, in the timeline's steps (where in the trace they happen).
    edges = np.append(np.asarray(timeline["t"]), end_t)
    missed, _ = np.histogram(reqs.arrival[wait > SLO_WAIT_S], bins=edges)
    timeline["misses"] = [int(m) for m in missed]
    return RunResult(
        policy=controller.name,
        trace=trace.name,
        slo_fraction=float(np.mean(wait <= SLO_WAIT_S)),
        p95_wait_s=float(np.percentile(np.where(np.isinf(wait), SHED_WAIT_S, wait), 95)),
        replica_seconds=cluster.replica_seconds,
        scale_events=scale_events,
        surge_to_capacity_s=surge_ready_at,
        shed=int(shed.sum()),
        aborted=len(aborted),
        max_replicas=max_target,
        timeline=timeline,
        decisions=list(getattr(controller, "decisions", [])),
    )


def saturated_throughput(mix: Mix, deployment: Deployment, cost: CostModel, seed: int) -> float:
    """Requests per second one replica completes when it always has work (same simulator)."""
    rng = np.random.default_rng(seed)
    n = 4000
    prompt, output = mix.sample(rng, n)
    reqs = Requests(np.zeros(n), prompt, output)
    admit = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    replica = Replica("calibration", 0.0, 0.0, deployment)
    replica.waiting.extend(range(n))
    warmup_s, measure_s = 120.0, 300.0
    done_at_warmup = 0
    for i in range(int((warmup_s + measure_s) / DT_S)):
        t = i * DT_S
        if t == warmup_s:
            done_at_warmup = replica.finished
        replica.step(t, reqs, admit, finish, cost)
    return (replica.finished - done_at_warmup) / measure_s


# --- policies under test ----------------------------------------------------------------------


def ray_default_config(deployment: Deployment, target: float | None = None) -> dict[str, Any]:
    """Ray's own policy as this project rendered it before the queue-depth policy.

    Ray's documented default target (2 ongoing requests) would run a 128-sequence engine at 1/64
    of its batch, and Ray Serve LLM's (1e9) never scales; the target here is the batch plus the
    queue target (or `target`, for the sweep), the spec's delays, Ray's default 30 s look-back.
    """
    config: dict[str, Any] = {
        "min_replicas": 0 if deployment.scale_to_zero_idle_s is not None else deployment.min_replicas,
        "initial_replicas": deployment.min_replicas,
        "max_replicas": deployment.max_replicas,
        "target_ongoing_requests": (
            float(deployment.max_num_seqs + deployment.target_queue_depth) if target is None else float(target)
        ),
        "upscale_delay_s": deployment.upscale_delay_s,
        "downscale_delay_s": deployment.downscale_delay_s,
    }
    if deployment.scale_to_zero_idle_s is not None:
        config["downscale_to_zero_delay_s"] = deployment.scale_to_zero_idle_s
    return config


def queue_depth_config(deployment: Deployment, spare_replicas: int = 0) -> dict[str, Any]:
    """The `autoscaling_config` that `build_app` renders for this deployment."""
    args = deployment.args().model_copy(update={"spare_replicas": spare_replicas})
    return app.autoscaling_config(args, max_num_seqs=deployment.max_num_seqs)


def controllers(deployment: Deployment, trace: Trace, throughput: float) -> dict[str, Callable[[], Controller]]:
    ours = queue_depth_config(deployment)
    spared = queue_depth_config(deployment, spare_replicas=1)
    default = ray_default_config(deployment)
    made: dict[str, Callable[[], Controller]] = {
        "queue-depth": lambda: RayServeController("queue-depth", ours, reports_engine_stats=True),
        SPARE_POLICY: lambda: RayServeController(SPARE_POLICY, spared, reports_engine_stats=True),
        "ray-default": lambda: RayServeController("ray-default", default, reports_engine_stats=False),
        "hpa": lambda: HPAController(deployment),
        "oracle-now": lambda: OracleController(trace, deployment, throughput),
        "clairvoyant": lambda: ClairvoyantController(trace, deployment, throughput),
    }
    for target in RAY_TARGETS:
        name = sweep_name(target)
        made[name] = functools.partial(
            RayServeController, name, ray_default_config(deployment, target), reports_engine_stats=False
        )
    return made


def sweep_name(target: float) -> str:
    return f"ray@{target:g}"


def tune_ray(results: dict[str, dict[str, RunResult]], counts: dict[str, int]) -> float:
    """The one `target_ongoing_requests` that is SLO-optimal for Ray's policy over all traces.

    One value, as an operator would configure it (a per-trace value would know the trace): the
    most requests within the SLO over every trace together, the fewer replica-seconds on a tie.
    """

    def score(target: float) -> tuple[float, float]:
        runs = [(by[sweep_name(target)], counts[trace]) for trace, by in results.items()]
        within = sum(r.slo_fraction * n for r, n in runs) / sum(n for _, n in runs)
        return round(within, 4), -sum(r.replica_seconds for r, _ in runs)

    return max(RAY_TARGETS, key=score)


def ray_at_equal_slo(by_policy: dict[str, RunResult], slo: float) -> tuple[RunResult, bool]:
    """Ray's policy at equal SLO attainment: its cheapest swept target within `slo`, if any.

    Where no target reaches `slo`, the target with the best SLO (then the fewer replica-seconds),
    flagged False: the comparison is then at a lower SLO for Ray.
    """
    swept = [by_policy[sweep_name(t)] for t in RAY_TARGETS if sweep_name(t) in by_policy]
    reaching = [r for r in swept if r.slo_fraction >= slo]
    if reaching:
        return min(reaching, key=lambda r: r.replica_seconds), True
    return max(swept, key=lambda r: (r.slo_fraction, -r.replica_seconds)), False


# The queue-depth policy with `autoscaling.spareReplicas: 1`: the SLO bought with one standing replica.
SPARE_POLICY = "queue-depth+1"
MAIN_POLICIES = ("queue-depth", SPARE_POLICY, "ray-default", "ray-tuned", "hpa", "oracle-now", "clairvoyant")
REFERENCES = ("oracle-now", "clairvoyant")
PLOT_COLOURS = {
    "queue-depth": "tab:blue",
    SPARE_POLICY: "tab:purple",
    "ray-default": "tab:orange",
    "ray-tuned": "tab:red",
    "hpa": "tab:green",
    "oracle-now": "tab:gray",
    "clairvoyant": "tab:brown",
}


def plot(trace: Trace, results: Sequence[RunResult]) -> Path | None:
    """One PNG per trace: load, queue, replicas and SLO misses over time, a line per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    load, queue, replicas, misses = axes
    first = results[0].timeline
    load.plot(np.asarray(first["t"]) / 60, first["rate"], color="black")
    load.set_ylabel("arrivals (req/s)")
    for res in results:
        t = np.asarray(res.timeline["t"]) / 60
        style = {"label": res.policy, "color": PLOT_COLOURS.get(res.policy), "linewidth": 1.2}
        if res.policy in REFERENCES:
            style["linestyle"] = ":"
        queue.plot(t, res.timeline["waiting"], **style)
        replicas.step(t, res.timeline["ready"], where="post", **style)
        # Misses per second of arrivals in each timeline step.
        misses.plot(t, np.asarray(res.timeline["misses"]) / TIMELINE_STEP_S, **style)
    queue.set_ylabel("requests waiting")
    queue.set_yscale("symlog", linthresh=10)
    replicas.set_ylabel("ready replicas")
    misses.set_ylabel(f"SLO misses (req/s, wait > {SLO_WAIT_S:g} s)")
    misses.set_xlabel("minutes")
    replicas.legend(loc="upper left", fontsize="small", ncol=len(results))
    load.set_title(f"{trace.name}: {trace.description}", fontsize="medium")
    fig.tight_layout()
    path = RESULTS / f"autoscaling-{trace.name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def check_goals(results: dict[str, dict[str, RunResult]], policy: str = "queue-depth") -> list[tuple[str, bool, str]]:
    """The issue's goals per trace, against Ray's policy at equal SLO attainment (the sweep)."""
    goals = []
    total_ours = total_base = 0.0
    for trace, by_policy in results.items():
        ours = by_policy[policy]
        base, equal = ray_at_equal_slo(by_policy, ours.slo_fraction)
        total_ours += ours.replica_seconds
        total_base += base.replica_seconds
        goals.append((f"{trace}: {policy} SLO >= 99 %", ours.slo_fraction >= 0.99, f"{100 * ours.slo_fraction:.2f} %"))
        ratio = ours.replica_seconds / base.replica_seconds
        versus = (
            f"{base.policy}, the cheapest Ray target at >= its SLO"
            if equal
            else f"{base.policy}, Ray's best SLO (no target reaches ours)"
        )
        goals.append(
            (
                f"{trace}: replica-s <= 85 % of Ray's policy at equal SLO",
                # Ray's side is at >= our SLO, or (flagged) at its best, which is below ours.
                ratio <= 0.85,
                f"{100 * ratio:.0f} % of {versus}; SLO {100 * ours.slo_fraction:.2f} vs "
                f"{100 * base.slo_fraction:.2f} %",
            )
        )
        goals.append(
            (
                f"{trace}: scale events <= Ray's policy at equal SLO",
                ours.scale_events <= base.scale_events,
                f"{ours.scale_events} vs {base.scale_events} ({base.policy})",
            )
        )
    goals.append(
        (
            "all traces: replica-s <= 85 % of Ray's policy at equal SLO",
            total_ours <= 0.85 * total_base,
            f"{100 * total_ours / total_base:.0f} %",
        )
    )
    return goals


def coarse(timeline: dict[str, list[float]], every: int = JSON_TIMELINE_EVERY) -> dict[str, list[float]]:
    """A timeline at a coarser step for the JSON: samples every `every`th step, misses summed."""
    out = {key: values[::every] for key, values in timeline.items() if key != "misses"}
    misses = timeline.get("misses", [])
    out["misses"] = [sum(misses[i : i + every]) for i in range(0, len(misses), every)]
    return out


def sweep_rows(results: dict[str, dict[str, RunResult]]) -> list[dict[str, Any]]:
    rows = []
    for trace, by_policy in results.items():
        row: dict[str, Any] = {"trace": trace}
        for target in RAY_TARGETS:
            res = by_policy.get(sweep_name(target))
            if res is not None:
                row[f"{target:g}"] = f"{100 * res.slo_fraction:.1f}% {res.replica_seconds / 1000:.1f}k"
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--traces", default="", help="comma-separated trace names (default: all)")
    parser.add_argument("--out", default="autoscaling", help="result file name under benchmarks/results/")
    parser.add_argument("--no-plots", action="store_true", help="skip the timeline PNGs")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    cost = CostModel.h100()
    rng = np.random.default_rng(opts.seed)
    traces = make_traces(rng)
    if opts.traces:
        wanted = set(opts.traces.split(","))
        traces = [t for t in traces if t.name in wanted]
    results: dict[str, dict[str, RunResult]] = {}
    capacity: dict[str, float] = {}
    counts: dict[str, int] = {}
    with ray_on_sim_clock():
        for k, trace in enumerate(traces):
            deployment = Deployment(scale_to_zero_idle_s=trace.scale_to_zero_idle_s)
            reqs = Requests.generate(trace, np.random.default_rng(opts.seed * 1000 + k))
            counts[trace.name] = len(reqs.arrival)
            mu = saturated_throughput(trace.segments[0].mix, deployment, cost, opts.seed)
            capacity[trace.name] = mu
            needed = math.ceil(trace.surge[1] / mu) if trace.surge else None
            warm = max(1, math.ceil(trace.rate(0.0) / (0.9 * mu)))
            results[trace.name] = {}
            for name, make in controllers(deployment, trace, mu).items():
                t0 = time.monotonic()
                res = simulate(trace, reqs, make(), deployment, cost, opts.seed + 17 * k, needed, warm)
                results[trace.name][name] = res
                print(f"  {trace.name:20s} {name:12s} {time.monotonic() - t0:5.1f} s", file=sys.stderr)
    tuned = tune_ray(results, counts)
    for by_policy in results.values():
        by_policy["ray-tuned"] = dataclasses.replace(by_policy[sweep_name(tuned)], policy="ray-tuned")
    rows = [results[trace.name][name].row() for trace in traces for name in MAIN_POLICIES]
    plots: list[str] = []
    if not opts.no_plots:
        for trace in traces:
            path = plot(trace, [results[trace.name][name] for name in MAIN_POLICIES])
            if path is not None:
                plots.append(shown(path))
    columns = [
        "trace",
        "policy",
        "slo_%",
        "p95_wait_s",
        "replica_s",
        "scale_events",
        "surge_to_capacity_s",
        "shed",
        "max_replicas",
    ]
    print(table(rows, columns))
    print(f"\nray-tuned: target_ongoing_requests = {tuned:g} (SLO-optimal over all traces; ray-default: 132)")
    sweep = sweep_rows(results)
    print("\nRay's policy by target_ongoing_requests (within SLO, replica-seconds):")
    print(table(sweep, ["trace", *(f"{t:g}" for t in RAY_TARGETS)]))
    goals = check_goals(results)
    print()
    for text, ok, detail in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {text}: {detail}")
    # The same goals with one spare replica: not the policy's defaults, the price of headroom.
    spare_goals = check_goals(results, SPARE_POLICY)
    print(f"\nWith autoscaling.spareReplicas = 1 ({SPARE_POLICY}):")
    for text, ok, detail in spare_goals:
        print(f"{'PASS' if ok else 'FAIL'}  {text}: {detail}")
    # The same goals for perfect foresight: whether they can be met at all, and at what cost.
    foresight_goals = check_goals(results, "clairvoyant")
    print("\nWith foresight (clairvoyant, a reference: the true rate 180 s ahead):")
    for text, ok, detail in foresight_goals:
        print(f"{'PASS' if ok else 'FAIL'}  {text}: {detail}")
    print(
        "\noracle-now and clairvoyant are references, not baselines: they know the true arrival rate"
        "\n(now, or 180 s ahead) without lag and move at once, and their replicas take the same cold starts."
        "\noracle-now's SLO is about what reacting can do; clairvoyant's cost is what foresight needs."
    )
    if not plots and not opts.no_plots:
        print("\nmatplotlib is not installed: no timeline plots (the timelines are in the JSON)")
    payload = {
        "benchmark": "autoscaling",
        "seed": opts.seed,
        "wall_s": round(time.monotonic() - started, 1),
        "model": h100.SOURCE,
        "gpu": "simulated nvidia-h100-80gb",
        "deployment": Deployment().__dict__,
        "policies": {
            "queue-depth": queue_depth_config(Deployment()),
            SPARE_POLICY: queue_depth_config(Deployment(), spare_replicas=1),
            "ray-default": ray_default_config(Deployment()),
            "ray-tuned": ray_default_config(Deployment(), tuned),
            "ray-sweep": f"ray-default with target_ongoing_requests in {list(RAY_TARGETS)}",
            "hpa": "batch occupancy target 0.7, tolerance 0.1, sync 15 s, metric lag 60 s (30 s average), "
            "scale-down stabilisation 300 s, up at most max(100 %, 4 pods) per 15 s, no scale to zero",
            "oracle-now": "reference: the true current arrival rate at 90 % of a saturated replica, no lag or delay",
            "clairvoyant": "reference: the highest true arrival rate of the next 180 s at 90 % of a saturated replica",
        },
        "cold_start_s": COLD_START_RANGE_S,
        "slo_wait_s": SLO_WAIT_S,
        "traces": {
            t.name: {
                "description": t.description,
                "duration_s": t.duration_s,
                "requests": counts[t.name],
                "saturated_replica_req_per_s": round(capacity[t.name], 3),
            }
            for t in traces
        },
        "rows": rows,
        "ray_sweep": [results[t.name][sweep_name(x)].row() for t in traces for x in RAY_TARGETS],
        "ray_tuned_target": tuned,
        "goals": [{"goal": text, "met": ok, "detail": detail} for text, ok, detail in goals],
        "goals_with_one_spare_replica": [
            {"goal": text, "met": ok, "detail": detail} for text, ok, detail in spare_goals
        ],
        "goals_with_foresight": [{"goal": text, "met": ok, "detail": detail} for text, ok, detail in foresight_goals],
        "plots": plots,
        "timelines": {
            trace: {policy: coarse(by_policy[policy].timeline) for policy in MAIN_POLICIES}
            for trace, by_policy in results.items()
        },
        "decisions": {
            trace: {policy: by_policy[policy].decisions[:40] for policy in MAIN_POLICIES}
            for trace, by_policy in results.items()
        },
    }
    path = write(opts.out, payload)
    print(f"\nwrote {shown(path)} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
