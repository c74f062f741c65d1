"""The operator's Prometheus metrics (prometheus-client), served on `LLMDEPLOY_METRICS_PORT`.

Counters and a histogram describe the operator's own work; `DeploymentsCollector` exports
each managed LLMDeployment's replica counts and phase from a snapshot that the handlers keep
current, so dashboards can plot desired vs ready replicas per deployment without scraping
the Kubernetes API. Every name here is listed in the README's metrics table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmdeploy.operator.api import Phase
from llmdeploy.operator.conditions import Reason

RECONCILES: Final = Counter(
    "llmdeploy_operator_reconciles_total",
    "Reconciles of LLMDeployments, by outcome (created, updated, unchanged, invalid, refused).",
    ["outcome"],
)
RECONCILE_ERRORS: Final = Counter(
    "llmdeploy_operator_reconcile_errors_total",
    "Reconciles that could not apply the RayService, by reason (InvalidSpec, RayServiceNotOwned, ApplyFailed).",
    ["reason"],
)
# Every reason starts at 0: the first error is then an increase that rate() sees, so the
# reconcile-errors alert fires on it (a series born at 1 shows no increase until a second error).
for _reason in (Reason.INVALID_SPEC, Reason.CHILD_CONFLICT, Reason.APPLY_FAILED):
    RECONCILE_ERRORS.labels(_reason.value)
RECONCILE_DURATION: Final = Histogram(
    "llmdeploy_operator_reconcile_duration_seconds",
    "Time from reading an LLMDeployment to having applied its RayService.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHILD_APPLIES: Final = Counter(
    "llmdeploy_operator_child_applies_total",
    "Writes of child objects, by kind and outcome (created, updated).",
    ["kind", "outcome"],
)
DRIFT_REPAIRS: Final = Counter(
    "llmdeploy_operator_drift_repairs_total",
    "RayServices re-applied because they were missing or edited by hand.",
)


@dataclass(frozen=True)
class DeploymentSnapshot:
    phase: str
    desired_replicas: int
    ready_replicas: int
    replicas: int
    queue_depth: float | None
    target_queue_depth: float


class DeploymentsCollector(Collector):
    """Per-LLMDeployment gauges from the latest status the operator wrote or read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], DeploymentSnapshot] = {}

    def update(self, namespace: str, name: str, status: Mapping[str, Any], *, target_queue_depth: float) -> None:
        snapshot = DeploymentSnapshot(
            phase=str(status.get("phase") or Phase.PENDING.value),
            desired_replicas=int(status.get("desiredReplicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            replicas=int(status.get("replicas") or 0),
            queue_depth=status.get("queueDepth"),
            target_queue_depth=target_queue_depth,
        )
        with self._lock:
            self._items[(namespace, name)] = snapshot

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._items.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            items = dict(self._items)
        by_phase = GaugeMetricFamily(
            "llmdeploy_operator_deployments", "Managed LLMDeployments by phase.", labels=["phase"]
        )
        for phase in Phase:
            by_phase.add_metric([phase.value], sum(1 for s in items.values() if s.phase == phase.value))
        yield by_phase
        labels = ["namespace", "name"]
        families = {
            "desired": GaugeMetricFamily(
                "llmdeploy_deployment_desired_replicas", "Replicas the spec or the autoscaler asks for.", labels=labels
            ),
            "ready": GaugeMetricFamily(
                "llmdeploy_deployment_ready_replicas", "Replicas ready to take requests.", labels=labels
            ),
            "current": GaugeMetricFamily("llmdeploy_deployment_replicas", "Replicas that exist.", labels=labels),
            "queue": GaugeMetricFamily(
                "llmdeploy_deployment_queue_depth", "Requests waiting per replica, as last reported.", labels=labels
            ),
            "target": GaugeMetricFamily(
                "llmdeploy_deployment_target_queue_depth",
                "Waiting requests per replica the autoscaler aims for (spec.autoscaling.targetQueueDepth).",
                labels=labels,
            ),
        }
        for (namespace, name), s in sorted(items.items()):
            key = [namespace, name]
            families["desired"].add_metric(key, s.desired_replicas)
            families["ready"].add_metric(key, s.ready_replicas)
            families["current"].add_metric(key, s.replicas)
            families["target"].add_metric(key, s.target_queue_depth)
            if s.queue_depth is not None:
                families["queue"].add_metric(key, s.queue_depth)
        yield from families.values()


DEPLOYMENTS: Final = DeploymentsCollector()
REGISTRY.register(DEPLOYMENTS)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0 disables it)."""
    if port:
        start_http_server(port)
