"""What the Ray dashboard's Serve API says about the engine deployment, in our terms. Pure.

`GET <head>:8265/api/serve/applications/` answers Ray Serve's `ServeInstanceDetails`. The
engine deployment of our application (Ray Serve LLM names it `LLMServer:<name>`) carries the
autoscaler's target and its replicas with their states. Its `autoscaling_detail` (Ray's record
of recent decisions and the metrics the policy saw) is declared but never filled by Ray 2.60,
so the queue depth also comes from the gauge the policy sets in Ray's controller, read from
the head's metrics port (`policy_queue_depth`), and the status timer records a scaling entry
itself when the target it reads changes (`status.observed_status`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from llmdeploy.serving.config import APPLICATION_NAME, ENGINE_DEPLOYMENT_PREFIX

# Replica states that hold (or are about to hold) an accelerator.
_LIVE_STATES: Final = frozenset({"STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION"})
# Keys of `autoscaling_detail.metrics` that carry requests waiting per replica, in order of preference.
QUEUE_DEPTH_KEYS: Final = ("queue_depth_per_replica", "waiting_per_replica")
MAX_HISTORY: Final = 20
# The policy's gauge as the head's metrics port serves it (`llmdeploy.serving.autoscaling.
# QUEUE_DEPTH_METRIC`, prefixed by Ray).
POLICY_QUEUE_DEPTH_METRIC: Final = "ray_llmdeploy_autoscaling_queue_depth_per_replica"


@dataclass(frozen=True)
class ServeObservation:
    desired_replicas: int
    replicas: int
    ready_replicas: int
    queue_depth: float | None
    history: tuple[dict[str, Any], ...]


def _iso(timestamp_s: float) -> str:
    return datetime.fromtimestamp(timestamp_s, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _queue_depth(detail: Mapping[str, Any]) -> float | None:
    metrics = detail.get("metrics") or {}
    for key in QUEUE_DEPTH_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return round(float(value), 3)
    return None


def engine_observation(details: Mapping[str, Any]) -> ServeObservation | None:
    """The engine deployment's replica counts, queue depth and scaling history; None if absent."""
    app = (details.get("applications") or {}).get(APPLICATION_NAME) or {}
    engines = [d for name, d in (app.get("deployments") or {}).items() if name.startswith(ENGINE_DEPLOYMENT_PREFIX)]
    if not engines:
        return None
    engine = engines[0]
    replicas = engine.get("replicas") or []
    detail = engine.get("autoscaling_detail") or {}
    history = tuple(
        {
            "time": _iso(float(d["timestamp_s"])),
            "from": int(d["prev_num_replicas"]),
            "to": int(d["curr_num_replicas"]),
            "reason": str(d.get("reason", ""))[:1024],
        }
        for d in (detail.get("decisions") or [])[-MAX_HISTORY:]
        if d.get("prev_num_replicas") != d.get("curr_num_replicas")
    )
    return ServeObservation(
        desired_replicas=int(engine.get("target_num_replicas") or 0),
        replicas=sum(1 for r in replicas if r.get("state") in _LIVE_STATES),
        ready_replicas=sum(1 for r in replicas if r.get("state") == "RUNNING"),
        queue_depth=_queue_depth(detail),
        history=history,
    )


def policy_queue_depth(metrics_text: str) -> float | None:
    """Requests waiting per engine replica at the policy's last decision, from Prometheus text.

    None when the gauge is absent (no decision yet, or autoscaling off) or the text is not
    Prometheus' exposition format.
    """
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name != POLICY_QUEUE_DEPTH_METRIC:
                continue
            for sample in family.samples:
                labels = sample.labels
                if labels.get("application") == APPLICATION_NAME and labels.get("deployment", "").startswith(
                    ENGINE_DEPLOYMENT_PREFIX
                ):
                    value = float(sample.value)
                    return round(value, 3) if math.isfinite(value) else None
    except ValueError:
        return None
    return None
