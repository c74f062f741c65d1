"""The status follows the Serve application as the Ray head reports it (replica counts, queue
depth, scaling history), read by the real operator from an HTTP server that answers like the
head service's dashboard (Ray 2.60's payload: no `autoscaling_detail`) and its metrics
port (the policy's queue-depth gauge)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.testing.kubeapi import KubeAPI
from llmdeploy.testing.operator_process import OperatorProcess, wait_for
from llmdeploy.testing.serve_details import ray_metrics_text, serve_details

from .conftest import LLMD, RAYSERVICES, llmdeployment

pytestmark = pytest.mark.integration


class FakeDashboard:
    """Serves `details` at /api/serve/applications/ and `metrics` at /metrics; records the paths asked."""

    def __init__(self) -> None:
        self.details: dict[str, Any] = {"applications": {}}
        self.metrics = ray_metrics_text(None)
        self.paths: list[str] = []
        # An HTTP status to refuse every read with (a dashboard behind Ray token authentication).
        self.refuse: int | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                if outer.refuse is not None:
                    code, body, kind = outer.refuse, b"Unauthorized", "text/plain"
                elif self.path.endswith("/metrics"):
                    code, body, kind = 200, outer.metrics.encode(), "text/plain; version=0.0.4"
                elif self.path.endswith("/api/serve/applications/"):
                    code, body, kind = 200, json.dumps(outer.details).encode(), "application/json"
                else:
                    code, body, kind = 404, b"{}", "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dashboard() -> Iterator[FakeDashboard]:
    fake = FakeDashboard()
    yield fake
    fake.close()


@pytest.fixture
def running(
    kube: KubeAPI, dashboard: FakeDashboard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OperatorProcess]:
    """The real operator, reading the fake head, with the LLMDeployment `tiny` (autoscaling 1-3) applied."""
    monkeypatch.setenv("LLMDEPLOY_RAY_METRICS_URL_TEMPLATE", f"http://127.0.0.1:{dashboard.port}/metrics-of/{{name}}")
    process = OperatorProcess(
        tmp_path / "kubeconfig",
        tmp_path / "operator.log",
        dashboard_url_template=f"http://127.0.0.1:{dashboard.port}/{{namespace}}/{{name}}",
    )
    process.start()
    try:
        kube.put_object(*LLMD, llmdeployment("tiny", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3}))
        wait_for(lambda: kube.get(*RAYSERVICES, "default", "tiny"), what="RayService", timeout=60, operator=process)
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.output


def status(kube: KubeAPI) -> dict[str, Any]:
    return dict((kube.get(*LLMD, "default", "tiny") or {}).get("status") or {})


def _details(
    states: list[str], target: int, decisions: list[tuple[float, int, int, str]], queue: float
) -> dict[str, Any]:
    return serve_details(states, target, decisions, {"queue_depth_per_replica": queue})


def test_status_records_moves_and_queue_depth_that_ray_260_does_not_report(
    kube: KubeAPI, dashboard: FakeDashboard, running: OperatorProcess
) -> None:
    dashboard.details = serve_details(["RUNNING"], 1)
    wait_for(lambda: status(kube).get("readyReplicas") == 1, what="one ready", operator=running)
    assert status(kube)["scalingHistory"] == []
    assert "queueDepth" not in status(kube)

    # The policy moves the target to 2 and its gauge shows the queue that made it.
    dashboard.metrics = ray_metrics_text(9.5)
    dashboard.details = serve_details(["RUNNING", "STARTING"], 2)
    wait_for(lambda: status(kube).get("desiredReplicas") == 2, what="the new target", operator=running)
    current = status(kube)
    assert (current["replicas"], current["readyReplicas"], current["queueDepth"]) == (2, 1, 9.5)
    [move] = current["scalingHistory"]
    assert (move["from"], move["to"], move["reason"]) == (1, 2, "Ray Serve target 1 -> 2 (queue 9.5/replica)")
    assert "/metrics-of/tiny/metrics" in dashboard.paths

    # Steady ticks add nothing; the way back down is the next entry.
    dashboard.details = serve_details(["RUNNING", "RUNNING"], 2)
    wait_for(lambda: status(kube).get("readyReplicas") == 2, what="two ready", operator=running)
    dashboard.metrics = ray_metrics_text(0.0)
    dashboard.details = serve_details(["RUNNING"], 1)
    wait_for(lambda: status(kube).get("desiredReplicas") == 1, what="back to one", operator=running)
    assert [(e["from"], e["to"]) for e in status(kube)["scalingHistory"]] == [(1, 2), (2, 1)]
    assert status(kube)["queueDepth"] == 0.0


def test_status_takes_rays_own_decisions_where_ray_reports_them(
    kube: KubeAPI, dashboard: FakeDashboard, running: OperatorProcess
) -> None:
    dashboard.details = _details(["RUNNING", "STARTING"], 2, [(1_800_000_000.0, 1, 2, "queue 9/replica > 4")], 4.5)
    wait_for(lambda: status(kube).get("replicas") == 2, what="replicas from the dashboard", operator=running)
    current = status(kube)
    assert (current["desiredReplicas"], current["readyReplicas"], current["queueDepth"]) == (2, 1, 4.5)
    assert current["scalingHistory"] == [
        {"time": "2027-01-15T08:00:00Z", "from": 1, "to": 2, "reason": "queue 9/replica > 4"}
    ]
    assert "/default/tiny/api/serve/applications/" in dashboard.paths

    dashboard.details = _details(
        ["RUNNING", "RUNNING", "RUNNING"],
        3,
        [(1_800_000_000.0, 1, 2, "queue 9/replica > 4"), (1_800_000_060.0, 2, 3, "queue 6/replica > 4")],
        1.0,
    )
    wait_for(lambda: status(kube).get("readyReplicas") == 3, what="three ready", operator=running)
    assert [e["to"] for e in status(kube)["scalingHistory"]] == [2, 3]
    assert status(kube)["queueDepth"] == 1.0


def test_a_dashboard_that_wants_a_token_is_named_once_and_the_status_follows_the_spec(
    kube: KubeAPI, dashboard: FakeDashboard, running: OperatorProcess
) -> None:
    def refusals(code: int) -> int:
        return running.output.count(f"the Ray dashboard refused to answer (HTTP {code}")

    dashboard.refuse = 401
    asked = len(dashboard.paths)
    wait_for(lambda: len(dashboard.paths) >= asked + 4, what="several refused reads", operator=running)
    assert refusals(401) == 1
    assert "token authentication" in running.output
    assert status(kube).get("desiredReplicas") == 1
    assert "queueDepth" not in status(kube)

    # Readable again, then refused again: the next refusal is named again, once.
    dashboard.refuse = None
    dashboard.details = serve_details(["RUNNING", "STARTING"], 2)
    wait_for(lambda: status(kube).get("desiredReplicas") == 2, what="the dashboard's target", operator=running)
    dashboard.refuse = 403
    asked = len(dashboard.paths)
    wait_for(lambda: len(dashboard.paths) >= asked + 4, what="refused reads again", operator=running)
    assert (refusals(401), refusals(403)) == (1, 1)
