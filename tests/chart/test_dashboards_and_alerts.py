"""The chart's Grafana dashboards and Prometheus alerts: well-formed, rendered by the chart, and
querying only metrics that exist.

The README's Metrics section is the list of names the operator, Ray Serve, vLLM and
kube-state-metrics really export. Every PromQL expression of every dashboard (panel targets and
template variables) and every alert is tokenised, and each metric name in it must be on that
list: a renamed metric or a typo fails here instead of drawing an empty panel or an alert that can
never fire. promtool is not used (none is available offline); the alerts' structure is checked
here instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from .conftest import CI_VALUES, find, the
from .helm import NAMESPACE, OPERATOR_CHART, REPO, render

README: Final = REPO / "README.md"
DASHBOARDS: Final = OPERATOR_CHART / "dashboards"
DASHBOARD_FILES: Final = sorted(DASHBOARDS.glob("*.json"))
ALERTS: Final = OPERATOR_CHART / "files" / "alerts.yaml"
OPERATIONS: Final = REPO / "docs" / "operations.md"
RUNBOOK_BASE: Final = "https://github.com/llmdeploy/llmdeploy/blob/main/docs/operations.md#"

EXPECTED_DASHBOARDS: Final = frozenset({"autoscaling.json", "caching-routing.json", "operator.json"})
EXPECTED_ALERTS: Final = frozenset(
    {
        "LLMDeploymentNoReadyReplicas",
        "LLMDeploymentQueueAboveTarget",
        "LLMDeployOperatorReconcileErrors",
        "LLMDeployOperatorDown",
        "LLMDeploymentResponseCacheBackendDown",
    }
)
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
# Series Prometheus itself synthesises for every scrape target; no exporter lists them.
PROMETHEUS_SERIES: Final = frozenset({"up"})
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_count", "_sum")
# Grafana's built-in variables; every other `$name` must be a template variable of the dashboard.
GRAFANA_BUILTIN_VARIABLES: Final = frozenset(
    {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__from", "__to"}
)
PROMETHEUS_DURATION: Final = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
METRIC_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


# --- The README's list of metric names --------------------------------------------------------


@dataclass(frozen=True)
class MetricCatalog:
    """Metric names from the README; `histograms` may also be queried with a histogram suffix."""

    names: frozenset[str]
    histograms: frozenset[str]

    def allows(self, name: str) -> bool:
        if name in self.names or name in PROMETHEUS_SERIES:
            return True
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in self.histograms:
                return True
        return False


_TABLE_ROW = re.compile(r"^\| `(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)` \| (?P<type>[a-z]+) \|")
_BULLET = re.compile(r"^- [^(]*\(`(?P<prefix>[a-z_]+)\*`\):(?P<names>.*)$", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`]+)`")


def _metrics_section(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("## Metrics") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _paragraphs(lines: list[str]) -> Iterator[str]:
    """Table rows one by one; bullets and paragraphs joined with their continuation lines."""
    block: list[str] = []
    for line in [*lines, ""]:
        starts_item = line.startswith(("- ", "|", "**"))
        if (not line.strip() or starts_item) and block:
            yield " ".join(block)
            block = []
        if line.strip():
            block.append(line.strip())
            if line.startswith("|"):
                yield block.pop()


def parse_metric_catalog(readme: str) -> MetricCatalog:
    """The metric names of the README's Metrics section.

    Operator table rows (`| \\`name\\` | type | ...`), the serving bullets (`- vLLM engine
    (\\`ray_vllm_*\\`): \\`a\\`, \\`b\\`, ...`, names without their prefix) and the cluster-only
    paragraph (`**Cluster-only** ...: \\`name\\` ...`). Serving histograms are not marked in the list
    ("histograms also export _bucket, _count, _sum"), so every serving name may carry a histogram
    suffix; operator names only where the table's type is histogram.
    """
    names: set[str] = set()
    histograms: set[str] = set()
    for block in _paragraphs(_metrics_section(readme)):
        if row := _TABLE_ROW.match(block):
            names.add(row["name"])
            if row["type"] == "histogram":
                histograms.add(row["name"])
        elif bullet := _BULLET.match(block):
            found = {bullet["prefix"] + name for name in _BACKTICKED.findall(bullet["names"])}
            names |= found
            histograms |= found
        elif block.startswith("**Cluster-only**"):
            names |= {name for name in _BACKTICKED.findall(block) if METRIC_NAME.match(name)}
    return MetricCatalog(frozenset(names), frozenset(histograms))


@pytest.fixture(scope="module")
def catalog() -> MetricCatalog:
    return parse_metric_catalog(README.read_text())


# --- Metric names in PromQL ---------------------------------------------------------------------

# Prometheus 3 functions (and the @ modifier's start() and end()), and aggregation operators.
# fmt: off
PROMQL_FUNCTIONS: Final = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "end",
    "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label",
    "sort_by_label_desc", "sort_desc", "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "tan", "tanh", "time", "timestamp", "vector", "year",
})
PROMQL_AGGREGATIONS: Final = frozenset({
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
})
# fmt: on
# Keywords followed by a parenthesised list of label names (not metrics).
PROMQL_LABEL_LIST_KEYWORDS: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
PROMQL_KEYWORDS: Final = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

_PROMQL_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
    | (?P<range>\[[^\]]*\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<bracket>[(){}])
    | (?P<operator>[-+*/%^=!~<>,@]+)
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """An expression the extractor cannot vouch for."""


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _PROMQL_TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(f"cannot tokenise {expr[position:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Skipped: strings (label matcher values, label_replace arguments), Grafana variables
    (`$namespace`, `${x}`, `[[x]]`), range and subquery brackets (`[5m]`, `[$__rate_interval]`),
    numbers and durations, label matchers inside `{...}`, label lists after by, without, on,
    ignoring, group_left and group_right, keywords, and function and aggregation names (an unknown
    name followed by `(` is an error rather than a guess). A `__name__` matcher is refused: the
    names it selects cannot be checked.
    """
    tokens = _tokens(expr)
    names: set[str] = set()
    parens = braces = 0
    index = 0
    while index < len(tokens):
        kind, value = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        index += 1
        if kind == "bracket":
            parens += {"(": 1, ")": -1}.get(value, 0)
            braces += {"{": 1, "}": -1}.get(value, 0)
            if parens < 0 or braces < 0:
                raise PromQLError(f"unbalanced {value!r} in {expr!r}")
            continue
        if kind != "name":
            continue
        if braces:
            if value == "__name__":
                raise PromQLError(f"a __name__ matcher selects names that cannot be checked: {expr!r}")
            continue
        if value in PROMQL_LABEL_LIST_KEYWORDS:
            if following == "(":
                close = next((i for i in range(index, len(tokens)) if tokens[i][1] == ")"), None)
                if close is None:
                    raise PromQLError(f"unclosed label list after {value!r} in {expr!r}")
                index = close + 1
            continue
        if value.lower() in PROMQL_KEYWORDS:
            continue
        if value in PROMQL_AGGREGATIONS and following in {"by", "without"}:
            continue
        if following == "(":
            if value not in PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS:
                raise PromQLError(f"unknown function {value!r} in {expr!r}")
            continue
        names.add(value)
    if parens or braces:
        raise PromQLError(f"unbalanced brackets in {expr!r}")
    return names


def grafana_variables(expr: str) -> set[str]:
    """Grafana variables an expression uses (`$1` in a label_replace() replacement is none)."""
    found = re.findall(r"\$(\w+)|\$\{(\w+)[^}]*\}|\[\[(\w+)[^\]]*\]\]", expr)
    return {name for name in (m[0] or m[1] or m[2] for m in found) if not name.isdigit()}


# --- Dashboards -----------------------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$", re.DOTALL)


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    text: str = query.get("query", "") if isinstance(query, dict) else query
    return text


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable; label_values() gives its selector."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        match = _LABEL_VALUES.match(query)
        if match is None:
            raise PromQLError(f"variable {variable['name']}: only label_values() queries are checked: {query!r}")
        if match["selector"]:
            yield f"variable {variable['name']}", match["selector"]


def unknown_metrics(expressions: Iterator[tuple[str, str]], catalog: MetricCatalog) -> dict[str, set[str]]:
    """{where: names not in the catalog} for every expression that queries an unknown name."""
    unknown: dict[str, set[str]] = {}
    for where, expr in expressions:
        if missing := {name for name in metric_names(expr) if not catalog.allows(name)}:
            unknown[where] = missing
    return unknown


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


@pytest.fixture(scope="module", params=DASHBOARD_FILES, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


# --- Alerts -----------------------------------------------------------------------------------------


def load_alert_rules() -> list[dict[str, Any]]:
    spec = yaml.safe_load(ALERTS.read_text())
    assert isinstance(spec, dict) and isinstance(spec.get("groups"), list), "alerts.yaml: a mapping with groups:"
    return [rule for group in spec["groups"] for rule in group["rules"]]


def _github_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the Markdown headings (lower-case, punctuation dropped, spaces to -)."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"^#{1,6}\s+(.+?)\s*$", line):
            anchors.add(re.sub(r"[^\w\- ]", "", match[1].lower()).replace(" ", "-"))
    return anchors


# === The README parser and the extractor ==========================================================


def test_the_readme_metric_list_parses_into_every_kind_of_name(catalog: MetricCatalog) -> None:
    assert {
        "llmdeploy_operator_reconciles_total",
        "llmdeploy_deployment_desired_replicas",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_prefix_cache_hits_total",
        "ray_vllm_cache_config_info",
        "ray_serve_num_http_error_requests_total",
        "ray_serve_autoscaling_target_replicas",
        "kube_pod_status_phase",
        "kube_pod_labels",
    } <= catalog.names
    assert all(METRIC_NAME.match(name) for name in catalog.names)
    assert not any(name.endswith("_") or "*" in name for name in catalog.names)
    # Table rows, vLLM bullet, Ray Serve bullet, cluster-only paragraph: none of them empty.
    for prefix in ("llmdeploy_operator_", "llmdeploy_deployment_", "ray_vllm_", "ray_serve_", "kube_"):
        assert sum(name.startswith(prefix) for name in catalog.names) >= 2, prefix
    assert "llmdeploy_operator_reconcile_duration_seconds" in catalog.histograms
    assert "llmdeploy_operator_reconciles_total" not in catalog.histograms


def test_histogram_suffixes_are_allowed_only_on_histograms(catalog: MetricCatalog) -> None:
    assert catalog.allows("llmdeploy_operator_reconcile_duration_seconds_bucket")
    assert catalog.allows("ray_vllm_time_to_first_token_seconds_count")
    assert catalog.allows("up")
    assert not catalog.allows("llmdeploy_operator_reconciles_total_bucket")
    assert not catalog.allows("llmdeploy_deployment_ready_replicas_sum")
    assert not catalog.allows("ray_vllm_num_request_waiting")


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'sum by (namespace, le) (rate(ray_vllm_e2e_request_latency_seconds_bucket{namespace=~"$namespace"}'
            "[$__rate_interval]))",
            {"ray_vllm_e2e_request_latency_seconds_bucket"},
        ),
        (
            # Label values that look like metric names, join label lists, numbers, offsets, bool.
            'histogram_quantile(0.95, sum(rate(a_bucket{job="b_total", le!="1e3"}[5m:30s] offset 1h)) by (le))'
            " > bool 1.5e-3 * on (namespace, WorkerId) group_left (deployment, replica) "
            "group by (namespace, WorkerId, deployment, replica) (c_total{deployment=~'LLMServer:$deployment'})",
            {"a_bucket", "c_total"},
        ),
        (
            'label_replace(x, "name", "$1", "deployment", "LLMServer:(.*)") or vector(0) unless ignoring(a) y',
            {"x", "y"},
        ),
        ('count_values("v", z) / scalar(sum without (instance) (w)) @ start()', {"z", "w"}),
        ('sum(m1) by (reason) and on() absent(m2{a="}{"})', {"m1", "m2"}),
        ("topk(5, m3) * on (pod) group_left m4 + 0x1F + ${datasource} + [[x]]", {"m3", "m4"}),
    ],
)
def test_extractor_finds_exactly_the_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ('{__name__=~"ray_.*"}', "__name__"),
        ("rat(ray_vllm_num_requests_waiting[5m])", "unknown function 'rat'"),
        ("sum(rate(x[5m])", "unbalanced"),
        ("sum(x))", "unbalanced"),
        ('x{a="b"', "unbalanced"),
        ("x # y", "cannot tokenise"),
    ],
)
def test_extractor_refuses_what_it_cannot_check(expr: str, message: str) -> None:
    with pytest.raises(PromQLError, match=message):
        metric_names(expr)


def test_a_panel_querying_an_unknown_metric_is_reported(catalog: MetricCatalog) -> None:
    broken = {
        "panels": [
            {"id": 1, "title": "fine", "targets": [{"refId": "A", "expr": "sum(ray_vllm_num_requests_waiting)"}]},
            {
                "type": "row",
                "id": 2,
                "panels": [
                    {
                        "id": 3,
                        "title": "typo",
                        "targets": [
                            {"refId": "A", "expr": "sum(ray_vllm_num_requests_running)"},
                            {"refId": "B", "expr": 'sum(rate(ray_vllm_num_request_waiting{model_name="x"}[5m]))'},
                        ],
                    }
                ],
            },
        ],
        "templating": {
            "list": [
                {"name": "m", "type": "query", "query": {"query": "label_values(llmdeploy_made_up, name)"}},
                {"name": "n", "type": "query", "query": "label_values(namespace)"},
            ]
        },
    }
    assert unknown_metrics(dashboard_expressions(broken), catalog) == {
        "panel 3 'typo' target B": {"ray_vllm_num_request_waiting"},
        "variable m": {"llmdeploy_made_up"},
    }


# === Dashboards =====================================================================================


def test_the_chart_ships_the_three_dashboards() -> None:
    assert {path.name for path in DASHBOARD_FILES} == EXPECTED_DASHBOARDS
    uids = [load_dashboard(path)["uid"] for path in DASHBOARD_FILES]
    titles = [load_dashboard(path)["title"] for path in DASHBOARD_FILES]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert "llmdeploy" in dashboard["tags"]
    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert all(isinstance(i, int) for i in ids)
    for panel in panels:
        assert panel.get("title"), panel["id"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] not in {"row", "text"}:
            assert panel["targets"], f"{panel['title']}: no query"


def test_dashboard_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_has_the_datasource_namespace_and_deployment_variables(dashboard: dict[str, Any]) -> None:
    variables = _variables(dashboard)
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    namespace = variable_query(variables["namespace"])
    deployment = variable_query(variables["deployment"])
    assert re.fullmatch(r"label_values\(llmdeploy_deployment_desired_replicas, namespace\)", namespace)
    assert re.fullmatch(
        r'label_values\(llmdeploy_deployment_desired_replicas\{namespace=~"\$namespace"\}, name\)', deployment
    )
    for name in ("namespace", "deployment"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_goes_to_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_queries_only_metrics_from_the_readme(dashboard: dict[str, Any], catalog: MetricCatalog) -> None:
    expressions = list(dashboard_expressions(dashboard))
    assert expressions
    assert unknown_metrics(iter(expressions), catalog) == {}


def test_dashboard_queries_use_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = set(_variables(dashboard)) | GRAFANA_BUILTIN_VARIABLES
    for where, expr in dashboard_expressions(dashboard):
        assert grafana_variables(expr) <= defined, f"{where}: {sorted(grafana_variables(expr) - defined)}"


def test_dashboard_panels_have_units(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_the_caching_dashboard_shows_the_router_and_the_response_cache() -> None:
    dashboard = load_dashboard(DASHBOARDS / "caching-routing.json")
    queried = " ".join(expr for _, expr in dashboard_expressions(dashboard))
    for metric in (
        "ray_llmdeploy_response_cache_requests_total",
        "ray_llmdeploy_response_cache_tokens_saved_total",
        "ray_llmdeploy_response_cache_evictions_total",
        "ray_llmdeploy_response_cache_backend_up",
        "ray_llmdeploy_response_cache_backend_errors_total",
        "ray_llmdeploy_router_decisions_total",
        "ray_llmdeploy_router_matched_prefix_tokens_bucket",
        "ray_llmdeploy_router_decision_seconds_bucket",
        "ray_llmdeploy_router_index_blocks",
    ):
        assert metric in queried, metric
    assert not [panel for panel in all_panels(dashboard) if panel["type"] == "text"], "no placeholder left"


# === Alerts ==========================================================================================


def test_alerts_are_the_expected_set_with_unique_names() -> None:
    names = [rule["alert"] for rule in load_alert_rules()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", load_alert_rules(), ids=lambda rule: rule.get("alert", "?"))
def test_alert_is_well_formed(rule: dict[str, Any], catalog: MetricCatalog) -> None:
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert isinstance(rule["expr"], str) and rule["expr"].strip()
    assert PROMETHEUS_DURATION.match(rule["for"]), rule["for"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert all(isinstance(annotations[key], str) and annotations[key].strip() for key in ("summary", "description"))
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()
    # Prometheus's Go templates in annotations: balanced and only $labels / $value.
    for text in annotations.values():
        assert text.count("{{") == text.count("}}")
        assert set(re.findall(r"\$(\w+)", text)) <= {"labels", "value"}
    assert {name for name in metric_names(rule["expr"]) if not catalog.allows(name)} == set()


def test_every_runbook_url_has_a_section_in_the_operations_guide() -> None:
    anchors = _github_anchors(OPERATIONS.read_text())
    for rule in load_alert_rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"docs/operations.md has no section #{anchor}"


def test_alert_durations_match_the_issue() -> None:
    durations = {rule["alert"]: rule["for"] for rule in load_alert_rules()}
    assert durations == {
        "LLMDeploymentNoReadyReplicas": "10m",
        "LLMDeploymentQueueAboveTarget": "15m",
        "LLMDeployOperatorReconcileErrors": "10m",
        "LLMDeployOperatorDown": "5m",
        "LLMDeploymentResponseCacheBackendDown": "5m",
    }


# === What the chart renders ============================================================================


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    """`helm template` with ci/full-values.yaml (every optional part on)."""
    return render(values=(CI_VALUES["full"],))


def test_full_values_render_every_dashboard_into_the_sidecar_configmap(full: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(CI_VALUES["full"].read_text())["dashboards"]
    configmap = the(full, "ConfigMap")
    assert configmap["metadata"]["namespace"] == values["namespace"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert values["labels"].items() <= configmap["metadata"]["labels"].items()
    assert configmap["metadata"]["annotations"] == values["annotations"]
    assert set(configmap["data"]) == EXPECTED_DASHBOARDS
    for name, text in configmap["data"].items():
        assert json.loads(text) == load_dashboard(DASHBOARDS / name)
    # A ConfigMap holds at most 1 MiB.
    assert sum(len(text.encode()) for text in configmap["data"].values()) < 1024 * 1024


def test_the_default_sidecar_label_is_grafana_dashboard() -> None:
    configmap = the(render(set_values=("dashboards.enabled=true",)), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == NAMESPACE


def test_full_values_render_the_alerts_unchanged(full: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(CI_VALUES["full"].read_text())["prometheusRule"]
    rule = the(full, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert values["labels"].items() <= rule["metadata"]["labels"].items()
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def _operator_job_regex() -> str:
    (rule,) = [rule for rule in load_alert_rules() if rule["alert"] == "LLMDeployOperatorDown"]
    (regex,) = re.findall(r'up\{job=~"([^"]+)"\}', rule["expr"])
    return regex


@pytest.mark.parametrize(
    "objects",
    [
        pytest.param(lambda: render(values=(CI_VALUES["full"],)), id="full"),
        pytest.param(lambda: render(set_values=("serviceMonitor.enabled=true",)), id="defaults"),
    ],
)
def test_operator_down_alert_matches_the_job_of_the_servicemonitor(
    objects: Callable[[], list[dict[str, Any]]],
) -> None:
    rendered = objects()
    (monitor,) = find(rendered, "ServiceMonitor")
    service = the(rendered, "Service")
    # The Prometheus Operator names the job after the Service, or after its jobLabel label.
    job_label = monitor["spec"].get("jobLabel")
    job = service["metadata"]["labels"][job_label] if job_label else service["metadata"]["name"]
    assert re.fullmatch(_operator_job_regex(), job), f"up{{job={job!r}}} escapes the LLMDeployOperatorDown rule"


def test_servicemonitor_keeps_the_llmdeployment_namespace_label(full: list[dict[str, Any]]) -> None:
    # The per-LLMDeployment gauges carry the LLMDeployment's `namespace`; without honorLabels the
    # scrape target's namespace (the operator's) wins and the dashboards and alerts see only that.
    (monitor,) = find(full, "ServiceMonitor")
    assert all(endpoint.get("honorLabels") is True for endpoint in monitor["spec"]["endpoints"])
