"""Every PromQL expression of the chart's dashboards and alerts, evaluated by a real Prometheus,
and the structured logs of the same run.

Prometheus (the Debian 2.42 binary) scrapes the real operator (against the Kubernetes API
emulator, reading the real Ray dashboard) and the real serving stack (Ray Serve LLM + vLLM on this
CPU) after a little traffic: chat completions with one prompt repeated (prefix-cache hits) and one
request for an unknown model (a 404). Each expression is sent to `/api/v1/query` with Grafana's
variables replaced by concrete values. Expressions are read from the dashboards and the alert
rules on every run, so a new panel or alert is checked without touching this file.

Each expression must parse (a 400 fails even for the expressions below) and return data, unless
`EXPECTED_EMPTY` names it with the reason it cannot on this stack; an entry that starts returning
data, or that no longer matches an expression, fails too, so the list cannot go stale.

The operator runs with `--log-format json` and Ray Serve with the logging config of
`llmdeploy serve --log-format json`; their lines are parsed and checked for the LLMDeployment and
the request id.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import observed_stack as stack
import pytest

from llmdeploy.operator.logs import LOG_OBJECT_KEY

pytestmark = [pytest.mark.prometheus, pytest.mark.engine]

VARIABLES: Final = stack.GrafanaVariables()

# kube-state-metrics exports these, in a cluster only.
_KUBE_STATE_METRICS: Final = (
    "cluster only: kube-state-metrics' kube_pod_status_phase and kube_pod_labels for Ray worker pods"
)
# The run's traffic has no 5xx (its 404 shows the error counters and their labels exist:
# test_error_counters_carry_the_labels_the_5xx_panels_filter_on).
_NO_5XX: Final = "counts 5xx responses only; the local traffic causes none"

# The response cache sets its backend-up gauge only when the state changes (first call: 1), and
# Ray 2.60 exports a gauge in the metrics report after a set: a 90 s test run often ends before
# Prometheus holds it (a 195 s image run did). Setting it on every report is for the cache's owners.
_BACKEND_UP: Final = "pending: ray_llmdeploy_response_cache_backend_up is set once, at the first backend call"
_NO_CACHE_TROUBLE: Final = "counts evictions and backend failures only; a short healthy run has none"

# {Expression.key: why it returns no data on the local stack}
EXPECTED_EMPTY: Final = {
    "autoscaling.json: panel 5 'Ray worker pods pending' target A": _KUBE_STATE_METRICS,
    "autoscaling.json: panel 8 'Ray worker pods by phase' target A": _KUBE_STATE_METRICS,
    "autoscaling.json: panel 15 'HTTP 5xx and shed requests' target A": _NO_5XX,
    "autoscaling.json: panel 15 'HTTP 5xx and shed requests' target B": _NO_5XX,
    "autoscaling.json: panel 16 '5xx share of HTTP requests' target A": _NO_5XX,
    "caching-routing.json: panel 25 'Cache backend up' target A": _BACKEND_UP,
    "caching-routing.json: panel 27 'Cache evictions and backend errors' target A": _NO_CACHE_TROUBLE,
    "caching-routing.json: panel 27 'Cache evictions and backend errors' target B": _NO_CACHE_TROUBLE,
}

# An alert's expression returns data exactly when the alert's condition holds, so each alert says
# whether the local stack makes it true: "fires" (returns data), "quiet" (returns none while the
# witnesses, the series its condition reads, do), or a reason it cannot be evaluated here.
ALERT_STATES: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    # UNREADY asks for a replica its (emulated) RayService never readies.
    "LLMDeploymentNoReadyReplicas": ("fires", ()),
    # The queue stays under its target in this short run; both gauges it compares exist.
    "LLMDeploymentQueueAboveTarget": (
        "quiet",
        ("llmdeploy_deployment_queue_depth", "llmdeploy_deployment_target_queue_depth"),
    ),
    # REFUSED (AWQ on a CPU) is an InvalidSpec reconcile error within the 5 minute window.
    "LLMDeployOperatorReconcileErrors": ("fires", ()),
    "LLMDeployOperatorDown": (
        "quiet",
        ("llmdeploy_operator_deployments", 'up{job=~".*llmdeploy.*-metrics"} == 1'),
    ),
    # Quiet; its gauge may not be scraped yet in a short run (see _BACKEND_UP).
    "LLMDeploymentResponseCacheBackendDown": ("quiet", ()),
}


def _dashboard_and_variable_expressions() -> list[stack.Expression]:
    return [e for e in stack.all_expressions() if e.source != "alerts"]


def _alert_expressions() -> list[stack.Expression]:
    return [e for e in stack.all_expressions() if e.source == "alerts"]


def _query(prometheus: stack.Prometheus, expression: stack.Expression) -> list[dict[str, Any]]:
    try:
        return prometheus.query(VARIABLES.substitute(expression.expr))
    except stack.PromQLRejected as exc:
        pytest.fail(f"{expression.key}: Prometheus rejects the expression: {exc}")


def test_prometheus_scrapes_both_targets(observed: tuple[stack.ObservedStack, stack.TrafficReport]) -> None:
    prometheus = observed[0].prometheus
    assert prometheus.targets_up() == {stack.OPERATOR_JOB: True, stack.RAY_JOB: True}


def test_the_traffic_was_served(observed: tuple[stack.ObservedStack, stack.TrafficReport]) -> None:
    # Two waves: chat completions answered 200, then the unknown model's 404.
    statuses = observed[1].statuses
    wave = len(statuses) // 2
    assert statuses == ([200] * (wave - 1) + [404]) * 2


@pytest.mark.parametrize("expression", _dashboard_and_variable_expressions(), ids=lambda e: e.key)
def test_dashboard_expression_returns_data(
    observed: tuple[stack.ObservedStack, stack.TrafficReport], expression: stack.Expression
) -> None:
    result = _query(observed[0].prometheus, expression)
    if expression.key in EXPECTED_EMPTY:
        if EXPECTED_EMPTY[expression.key] is _BACKEND_UP:
            return  # present or not, depending on Ray's report timing
        assert result == [], (
            f"{expression.key} now returns data; remove it from EXPECTED_EMPTY ({EXPECTED_EMPTY[expression.key]})"
        )
        return
    assert result, f"{expression.key} returns no data on the local stack:\n{VARIABLES.substitute(expression.expr)}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{expression.key}: only NaN/Inf: {result}"


def test_every_expected_empty_entry_names_an_expression() -> None:
    keys = {e.key for e in stack.all_expressions()}
    assert set(EXPECTED_EMPTY) <= keys, sorted(set(EXPECTED_EMPTY) - keys)


def test_every_alert_has_a_state_on_the_local_stack() -> None:
    names = {e.where.removeprefix("alert ") for e in _alert_expressions()}
    assert names == set(ALERT_STATES), (
        f"add to ALERT_STATES whether these fire on the local stack: {sorted(names - set(ALERT_STATES))}; "
        f"remove: {sorted(set(ALERT_STATES) - names)}"
    )


@pytest.mark.parametrize("expression", _alert_expressions(), ids=lambda e: e.where)
def test_alert_expression_matches_its_state(
    observed: tuple[stack.ObservedStack, stack.TrafficReport], expression: stack.Expression
) -> None:
    prometheus = observed[0].prometheus
    state, witnesses = ALERT_STATES[expression.where.removeprefix("alert ")]
    result = _query(prometheus, expression)
    for witness in witnesses:
        assert prometheus.query(witness), f"{expression.where}: its input {witness} has no data"
    if state == "fires":
        assert result, f"{expression.where} should fire on the local stack and returns nothing"
    else:
        assert result == [], f"{expression.where} ({state}) returns data: {result}"


def test_no_ready_replicas_fires_for_the_unready_deployment_only(
    observed: tuple[stack.ObservedStack, stack.TrafficReport],
) -> None:
    (rule,) = [e for e in _alert_expressions() if e.where == "alert LLMDeploymentNoReadyReplicas"]
    firing = {(s["metric"]["namespace"], s["metric"]["name"]) for s in observed[0].prometheus.query(rule.expr)}
    assert firing == {(stack.NAMESPACE, stack.UNREADY)}


def test_error_counters_carry_the_labels_the_5xx_panels_filter_on(
    observed: tuple[stack.ObservedStack, stack.TrafficReport],
) -> None:
    prometheus = observed[0].prometheus
    (http,) = prometheus.query('ray_serve_num_http_error_requests_total{error_code="404"}')
    assert {"namespace", "ray_io_cluster", "route", "error_code"} <= set(http["metric"])
    deployment = prometheus.query('ray_serve_num_deployment_http_error_requests_total{error_code="404"}')
    assert deployment and {"namespace", "ray_io_cluster", "deployment"} <= set(deployment[0]["metric"])


def test_variables_offer_the_served_deployment(observed: tuple[stack.ObservedStack, stack.TrafficReport]) -> None:
    prometheus = observed[0].prometheus
    names = {
        s["metric"]["name"]
        for s in prometheus.query(
            VARIABLES.substitute('llmdeploy_deployment_desired_replicas{namespace=~"$namespace"}')
        )
    }
    assert {stack.SERVED, stack.UNREADY, stack.REFUSED} <= names
    # The serving metrics of the same deployment are found under the same variable values.
    assert prometheus.query(
        VARIABLES.substitute('ray_serve_deployment_replica_healthy{deployment="LLMServer:$deployment"}')
    )


# --- Structured logs of the same run -----------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line[:300]}")
    return parsed


def test_operator_json_lines_carry_the_llmdeployment(observed: tuple[stack.ObservedStack, stack.TrafficReport]) -> None:
    lines = _json_lines(observed[0].operator.output)
    assert lines
    for line in lines:
        assert {"message", "timestamp", "severity"} <= set(line), line
    with_object = [line for line in lines if LOG_OBJECT_KEY in line]
    for line in with_object:
        ref = line[LOG_OBJECT_KEY]
        # The owned RayService's index lines name it; it has its LLMDeployment's namespace and name.
        assert ref["kind"] in {"LLMDeployment", "RayService"}, line
        assert ref["namespace"] == stack.NAMESPACE and ref["name"] in {stack.SERVED, stack.UNREADY, stack.REFUSED}, line
    named = {line[LOG_OBJECT_KEY]["name"] for line in with_object}
    assert {stack.SERVED, stack.UNREADY, stack.REFUSED} <= named
    # Handler and timer outcomes, and the refusal, are all per-object lines.
    refused = [line for line in with_object if line[LOG_OBJECT_KEY]["name"] == stack.REFUSED]
    assert any("invalid spec" in line["message"] for line in refused), refused
    # A line about one of them that lacks the reference would be one a log search cannot find.
    # (Debug lines of the API client and the dashboard reads name URLs, not objects.)
    names = re.compile(rf"\b({stack.SERVED}|{stack.UNREADY}|{stack.REFUSED})\b")
    orphans = [
        line["message"]
        for line in lines
        if LOG_OBJECT_KEY not in line and line["severity"] != "debug" and names.search(line["message"])
    ]
    assert orphans == []


def _serve_logs(session_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((session_dir / "logs" / "serve").glob("*.log")):
        for line in _json_lines(path.read_text(errors="replace")):
            yield path.name, line


def test_serving_json_lines_carry_the_request_id(observed: tuple[stack.ObservedStack, stack.TrafficReport]) -> None:
    served, traffic = observed
    lines = list(_serve_logs(served.serving.session_dir))
    assert lines
    for file, line in lines:
        assert {"levelname", "asctime", "message", "component_name"} <= set(line), (file, line)
    # Every line written while serving a request names it; requests are the lines with a route.
    in_requests = [(file, line) for file, line in lines if line.get("route")]
    assert in_requests
    missing = [(file, line["message"][:120]) for file, line in in_requests if not line.get("request_id")]
    assert missing == []
    # Each request's id (the client's X-Request-ID) is on its lines in the proxy, the ingress and,
    # for the served ones, the engine replica.
    by_id: dict[str, set[str]] = {}
    for file, line in in_requests:
        by_id.setdefault(line["request_id"], set()).add(file.split("_")[0] + ("_engine" if "LLMServer" in file else ""))
    for request_id, status, cached in zip(traffic.request_ids, traffic.statuses, traffic.cached, strict=True):
        components = by_id.get(request_id, set())
        assert {"proxy", "replica"} <= components, (request_id, components)
        if status == 200 and not cached:
            assert "replica_engine" in components, (request_id, components)
