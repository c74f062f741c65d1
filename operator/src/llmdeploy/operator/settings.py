"""Operator settings, read once from the environment, and kopf's tuning at startup."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf

from llmdeploy.operator import k8s, metrics


@dataclass(frozen=True)
class OperatorSettings:
    # Seconds between status refreshes from the child RayService.
    status_interval_s: float = 10.0
    # Seconds the timer waits after the resource changed, so it does not race the reconcile.
    status_idle_s: float = 1.0
    # Port of the operator's Prometheus metrics and health endpoints.
    metrics_port: int = 8080

    @classmethod
    def from_env(cls) -> OperatorSettings:
        return cls(
            status_interval_s=float(os.environ.get("LLMDEPLOY_STATUS_INTERVAL_S", cls.status_interval_s)),
            status_idle_s=float(os.environ.get("LLMDEPLOY_STATUS_IDLE_S", cls.status_idle_s)),
            metrics_port=int(os.environ.get("LLMDEPLOY_METRICS_PORT", cls.metrics_port)),
        )


SETTINGS = OperatorSettings.from_env()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    k8s.load_config()
    metrics.serve(SETTINGS.metrics_port)
    # Handler progress lives in annotations; kopf's own diff-base annotation is what tells a
    # real spec change from a resume, so a restart does not re-apply anything.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="llmdeploy.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="llmdeploy.io", key="last-handled-configuration"
    )
    # Transient API errors are retried with backoff, bounded by kopf's per-handler retry logic.
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.watching.server_timeout = 300
    # kopf's own INFO lines ("Timer succeeded") would become an Event per timer tick: post only
    # warnings from logs; the handlers post their Normal Events explicitly with kopf.event().
    settings.posting.level = logging.WARNING
