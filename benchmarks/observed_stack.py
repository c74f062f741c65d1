"""The local stack under a real Prometheus: for the observability tests and the dashboard images.

What runs, all on loopback:

- Prometheus (the `prometheus` binary on PATH; Debian's 2.42 in CI) with a 1 s scrape interval
  and its storage in a temporary folder. It scrapes two jobs, labelled as the chart's
  ServiceMonitor and a Ray PodMonitor would label them in a cluster: the operator's metrics
  endpoint (job named after the chart's metrics Service, `honor_labels` so the per-deployment
  gauges keep the LLMDeployment's own `namespace`) and Ray's metrics port (with the `namespace`
  and `ray_io_cluster` target labels that Kubernetes service discovery would add).
- The real operator process against the in-process Kubernetes API emulator, reading the Serve
  application's state from the real Ray dashboard of the local Ray instance.
- The serving stack: a local Ray instance with `build_app` of an LLMDeployment with queue-depth
  autoscaling (as `llmdeploy serve` runs it), JSON-encoded Serve logs.

`Prometheus.query` raises `PromQLRejected` on a 400 (bad syntax or types), so a malformed
dashboard expression fails even when no data is expected.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from llmdeploy.testing.local_stack import ENGINE_ENV
from llmdeploy.testing.operator_process import free_port

REPO: Final = Path(__file__).resolve().parents[1]
CHART: Final = REPO / "charts" / "llmdeploy-operator"
DASHBOARDS: Final = CHART / "dashboards"
ALERTS: Final = CHART / "files" / "alerts.yaml"
LLMD_CRD: Final = REPO / "crds" / "llmdeploy.io_llmdeployments.yaml"
REAL_RAYSERVICE_CRD: Final = REPO.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
MINIMAL_RAYSERVICE_CRD: Final = REPO / "tests" / "integration" / "data" / "rayservice-crd-minimal.yaml"

NAMESPACE: Final = "default"
# The served LLMDeployment: the same name in the emulator (operator gauges) and in Ray (engine
# deployment `LLMServer:tiny`), so one `$deployment` value selects both, as in a cluster.
SERVED: Final = "tiny"
# Asks for a replica whose RayService never becomes ready: LLMDeploymentNoReadyReplicas's case.
UNREADY: Final = "unready"
# A spec the operator refuses (AWQ cannot run on a CPU): reconcile errors, for
# LLMDeployOperatorReconcileErrors and the errors panels.
REFUSED: Final = "refused"
# Job of the operator's scrape, as the Prometheus Operator names it after the chart's metrics
# Service (release `llmdeploy`): what `up{job=~".*llmdeploy.*-metrics"}` expects.
OPERATOR_JOB: Final = "llmdeploy-llmdeploy-operator-metrics"
RAY_JOB: Final = "ray"
SCRAPE_INTERVAL_S: Final = 1
MANIFEST: Final = f"""
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {{name: {SERVED}, namespace: {NAMESPACE}}}
spec:
  model: {{source: "builtin://tiny", name: tiny, maxModelLen: 512}}
  accelerator: {{type: cpu, kvCacheMemoryMiB: 64}}
  batching: {{maxNumSeqs: 8, maxNumBatchedTokens: 512}}
  serving: {{maxOngoingRequests: 16, maxQueuedRequests: 64}}
  autoscaling: {{enabled: true, minReplicas: 1, maxReplicas: 2, targetQueueDepth: 4}}
  responseCache: {{enabled: true, backend: memory}}
"""


def wait_until(condition: Callable[[], Any], *, timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --- Prometheus ------------------------------------------------------------------------------------


class PromQLRejected(ValueError):
    """Prometheus answered 400 or 422: the expression does not parse or does not type-check."""


def scrape_config(operator_target: str, ray_target: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [
            {
                "job_name": OPERATOR_JOB,
                "honor_labels": True,
                "static_configs": [{"targets": [operator_target], "labels": {"namespace": "llmdeploy-system"}}],
            },
            {
                "job_name": RAY_JOB,
                "static_configs": [
                    {"targets": [ray_target], "labels": {"namespace": NAMESPACE, "ray_io_cluster": SERVED}}
                ],
            },
        ],
    }


@dataclass
class Prometheus:
    """A Prometheus server on loopback with its storage in `workdir`."""

    workdir: Path
    config: Mapping[str, Any]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Set: talk to this already running Prometheus instead (start() is then not called).
    external_url: str = ""

    @property
    def url(self) -> str:
        return self.external_url.rstrip("/") or f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: `make system-packages` (Debian's prometheus package)")
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(dict(self.config)))
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                # The Debian build otherwise looks for its web assets under /usr/share.
                "--web.console.templates=/dev/null",
                "--web.console.libraries=/dev/null",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout_s=timeout_s, what="Prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code in (400, 422):
                raise PromQLRejected(f"{exc.code}: {detail}") from exc
            raise
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) `expr` evaluates to now."""
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": str(start), "end": str(end), "step": str(step_s)}
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        """{job: up} for every active target."""
        data = self._get("/api/v1/targets", {"state": "active"})
        return {t["labels"]["job"]: t["health"] == "up" for t in data["activeTargets"]}


# --- The expressions of the dashboards and alerts -----------------------------------------------------

_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Expression:
    """One PromQL expression: where it comes from, its text, and the title it is drawn under."""

    source: str  # dashboard file name or "alerts"
    where: str  # "panel 6 'Replicas' target A", "variable namespace", "alert LLMDeploymentNoReadyReplicas"
    expr: str
    panel_id: int | None = None
    legend: str = ""

    @property
    def key(self) -> str:
        return f"{self.source}: {self.where}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(name: str, dashboard: Mapping[str, Any]) -> Iterator[Expression]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Expression(
                name,
                f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}",
                target["expr"],
                panel_id=panel.get("id"),
                legend=target.get("legendFormat", ""),
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query", "")
        text = query.get("query", "") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"{name}: variable {variable['name']}: only label_values() queries are supported")
        if match["selector"]:
            yield Expression(name, f"variable {variable['name']}", match["selector"])


def alert_expressions() -> Iterator[Expression]:
    spec = yaml.safe_load(ALERTS.read_text())
    for group in spec["groups"]:
        for rule in group["rules"]:
            yield Expression("alerts", f"alert {rule['alert']}", rule["expr"])


def all_expressions() -> list[Expression]:
    found = [e for name, d in load_dashboards().items() for e in dashboard_expressions(name, d)]
    return [*found, *alert_expressions()]


@dataclass(frozen=True)
class GrafanaVariables:
    """Concrete values for Grafana's variables; the rate window covers the whole short run."""

    namespace: str = NAMESPACE
    deployment: str = SERVED
    rate_interval: str = "3m"
    interval: str = "5s"
    range: str = "10m"

    def substitute(self, expr: str) -> str:
        values = {
            "namespace": self.namespace,
            "deployment": self.deployment,
            "__rate_interval": self.rate_interval,
            "__interval": self.interval,
            "__range": self.range,
        }

        def replace(match: re.Match[str]) -> str:
            name = match[1] or match[2]
            if name not in values:
                raise ValueError(f"no value for Grafana variable ${name} in {expr!r}")
            return values[name]

        return re.sub(r"\$\{(\w+)\}|\$(?!\d)(\w+)", replace, expr)


# --- The operator against the emulator ------------------------------------------------------------------


def llmdeployment(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"source": "builtin://tiny", "maxModelLen": 512}, "accelerator": {"type": "cpu"}}
    body.update(spec)
    return {
        "apiVersion": "llmdeploy.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": body,
    }


RAYSERVICE_READY: Final = {
    "status": {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "RunningServeApp",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "activeServiceStatus": {
            "applicationStatuses": {
                "llm": {"status": "RUNNING", "serveDeploymentStatuses": {"LLMServer": {"status": "HEALTHY"}}}
            }
        },
    }
}


class HeadServices:
    """Plays the cluster's `<rayservice>-head-svc:8265` on loopback: `/<name>/...` of SERVED goes to
    the local Ray dashboard, any other RayService has no head service yet (502)."""

    def __init__(self, dashboard_url: str) -> None:
        import http.server
        import threading

        target = dashboard_url

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name, _, rest = self.path.lstrip("/").partition("/")
                if name != SERVED:
                    self.send_error(502, f"no head service for {name}")
                    return
                try:
                    with urllib.request.urlopen(f"{target}/{rest}", timeout=5) as upstream:
                        body, status = upstream.read(), upstream.status
                except urllib.error.HTTPError as exc:
                    body, status = exc.read(), exc.code
                except (urllib.error.URLError, OSError):
                    self.send_error(502, "dashboard unreachable")
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url_template(self) -> str:
        """LLMDEPLOY_DASHBOARD_URL_TEMPLATE for the operator."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/{{name}}"

    def __enter__(self) -> HeadServices:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def operator_on_emulator(
    workdir: Path,
    *,
    dashboard_url: str,
    metrics_port: int,
    ray_metrics_url: str = "",
    log_format: str = "json",
    before_create: Callable[[], Any] = lambda: True,
) -> Iterator[Any]:
    """The real operator process managing SERVED (ready), UNREADY and REFUSED; yields the process.

    The emulator plays KubeRay's part only in marking SERVED's RayService ready; its replicas and
    queue depth come from the real Ray dashboard at `dashboard_url`.
    """
    from llmdeploy.testing.kubeapi import KubeAPI
    from llmdeploy.testing.operator_process import OperatorProcess

    rayservice_crd = REAL_RAYSERVICE_CRD if REAL_RAYSERVICE_CRD.is_file() else MINIMAL_RAYSERVICE_CRD
    rayservices = ("ray.io", "v1", "rayservices")
    with KubeAPI(crds=[LLMD_CRD, rayservice_crd]) as kube, HeadServices(dashboard_url) as heads:
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        proc = OperatorProcess(
            kubeconfig,
            workdir / "operator.log",
            metrics_port=metrics_port,
            status_interval_s=1.0,
            dashboard_url_template=heads.url_template,
            log_format=log_format,
            # The head's metrics port, where the autoscaling policy's queue-depth gauge is read.
            extra_env={"LLMDEPLOY_RAY_METRICS_URL_TEMPLATE": ray_metrics_url},
        )
        proc.start()
        try:
            wait_until(before_create, timeout_s=60, what="the operator's metrics to be scraped")
            spec = yaml.safe_load(MANIFEST)["spec"]
            kube.put_object("llmdeploy.io", "v1alpha1", "llmdeployments", llmdeployment(SERVED, **spec))
            kube.put_object("llmdeploy.io", "v1alpha1", "llmdeployments", llmdeployment(UNREADY))
            kube.put_object(
                "llmdeploy.io",
                "v1alpha1",
                "llmdeployments",
                llmdeployment(REFUSED, quantization={"method": "awq"}),
            )
            wait_until(
                lambda: kube.get(*rayservices, NAMESPACE, SERVED),
                timeout_s=60,
                what=f"the operator to create RayService {SERVED}",
            )
            kube.patch_object(*rayservices, NAMESPACE, SERVED, RAYSERVICE_READY, subresource="status")
            yield proc
        finally:
            proc.stop()


# --- The serving stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    base_url: str
    metrics_target: str
    dashboard_url: str
    session_dir: Path


@contextlib.contextmanager
def serving_stack(workdir: Path, *, metrics_port: int) -> Iterator[Serving]:
    """Ray Serve LLM + vLLM serving MANIFEST on this CPU, with JSON-encoded Serve logs."""
    import ray
    from ray import serve

    from llmdeploy.operator.manifest import load_manifests
    from llmdeploy.operator.serveconfig import serving_args
    from llmdeploy.serving import app, tinymodel
    from llmdeploy.serving.config import APPLICATION_NAME
    from llmdeploy.serving.local import serve_logging_config

    manifest = workdir / "llmdeployment.yaml"
    manifest.write_text(MANIFEST)
    ((obj, _),) = load_manifests(str(manifest))
    args = serving_args(obj.spec, name=obj.metadata.name, served_model_name=obj.served_model_name)
    saved = dict(os.environ)
    try:
        for key, value in ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        # The operator reads the dashboard without a token, as it does in a cluster. Forced, not
        # defaulted: `ray.init` of a new local cluster writes RAY_AUTH_MODE=token into the driver's
        # environment (and a token under ~/.ray turns it on), so an earlier Ray leaves it set.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        for key in (tinymodel.MODEL_CACHE_ENV, "VLLM_CACHE_ROOT", "TORCH_HOME"):
            os.environ.setdefault(key, str(workdir / key.lower()))
        tinymodel.ensure_tiny_model("tiny")
        http_port, dashboard_port = free_port(), free_port()
        # Logical CPUs: the engine's placement group takes 2 and the ingress 1 (2 cores here).
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            _metrics_export_port=metrics_port,
            # Ray's session folder (its logs, for the log tests) goes with the run's folder.
            _temp_dir=str(workdir / "ray"),
        )
        try:
            logging_config = serve_logging_config("json")
            serve.start(http_options={"host": "127.0.0.1", "port": http_port}, logging_config=logging_config)
            serve.run(
                app.build_app(args.model_dump(mode="json")),
                name=APPLICATION_NAME,
                route_prefix="/",
                logging_config=logging_config,
            )
            session = Path(ray._private.worker._global_node.get_session_dir_path())
            yield Serving(
                f"http://127.0.0.1:{http_port}",
                f"127.0.0.1:{metrics_port}",
                f"http://127.0.0.1:{dashboard_port}",
                session,
            )
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- Traffic ----------------------------------------------------------------------------------------------


REPEATED_SENTENCE: Final = (
    "The operator renders a RayService from each LLMDeployment and Prometheus scrapes the engine."
)


# Present once Prometheus has scraped what `send_traffic` caused: the prefix-cache hits of the
# repeated prompt, the 404, and the operator's view of the served deployment (ready, from KubeRay's
# emulated status) and of the refused one.
SCRAPED_WHEN: Final = (
    "ray_vllm_prefix_cache_hits_total > 0",
    'ray_serve_num_http_error_requests_total{error_code="404"}',
    f'llmdeploy_deployment_ready_replicas{{name="{SERVED}"}} == 1',
    "llmdeploy_operator_reconcile_errors_total > 0",
    # The operator reads it from the autoscaling policy's gauge on Ray's metrics port, which Ray
    # exports only after the controller has run the policy and its metrics agent has reported.
    f'llmdeploy_deployment_queue_depth{{name="{SERVED}"}}',
    # Series born with the traffic need two samples before rate() returns anything.
    "rate(ray_serve_deployment_request_counter_total[1m])",
    "rate(ray_serve_num_http_requests_total[1m])",
)
# Series born with a request (vLLM's histograms, the prefix-cache hits) are first scraped at
# their final value, which rate() cannot tell from no traffic: a second wave of traffic, once the
# first is scraped, shows up as increases.
INCREASED_WHEN: Final = (
    "sum(increase(ray_vllm_e2e_request_latency_seconds_count[1m])) > 0",
    "sum(increase(ray_vllm_prefix_cache_hits_total[1m])) > 0",
    "sum(increase(ray_vllm_prompt_tokens_cached_total[1m])) > 0",
    "sum(increase(ray_serve_deployment_request_counter_total[1m])) > 0",
)
# Then a few more scrapes, for the other series the traffic moved.
SETTLE_S: Final = 5.0


_REQUEST_NUMBERS: Final = itertools.count()
# Greedy requests answered once in this process: the response cache answers their repeats.
_ANSWERED_GREEDY: Final[set[str]] = set()


@dataclass
class TrafficReport:
    request_ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    # Whether the response cache should answer it (the repeat of a greedy request): no engine call.
    cached: list[bool] = field(default_factory=list)


def send_traffic(
    base_url: str, *, requests: int = 6, repeat: int = 3, report: TrafficReport | None = None
) -> TrafficReport:
    """A few chat completions, and one for an unknown model (404).

    One long sampled prompt is sent `repeat` times (the response cache leaves sampled requests
    alone, so vLLM's prefix cache serves the repeats), and one short greedy prompt twice (the
    second is answered by the response cache).

    Each request carries its own X-Request-ID, which Ray Serve adopts as the request id of the
    log lines it writes while serving it.
    """
    report = report or TrafficReport()
    prompts = [f"Tell me about observability, part {i}." for i in range(requests)]
    # About 270 tokens: longer than a KV-cache block, so the repeats hit vLLM's prefix cache.
    prompts += [" ".join([REPEATED_SENTENCE] * 6)] * repeat
    bodies: list[dict[str, Any]] = [
        {"model": "tiny", "messages": [{"role": "user", "content": p}], "max_tokens": 16} for p in prompts
    ]
    greedy = {"model": "tiny", "messages": [{"role": "user", "content": "Cache me."}], "max_tokens": 8}
    bodies += [{**greedy, "temperature": 0}] * 2
    bodies.append({"model": "no-such-model", "messages": [{"role": "user", "content": "404"}], "max_tokens": 4})
    for body in bodies:
        request_id = f"obs-{os.getpid()}-{next(_REQUEST_NUMBERS):05d}"
        request = urllib.request.Request(
            f"{base_url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status = int(response.status)
                response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
        key = json.dumps(body, sort_keys=True)
        report.request_ids.append(request_id)
        report.statuses.append(status)
        report.cached.append(body.get("temperature") == 0 and key in _ANSWERED_GREEDY)
        if status == 200 and body.get("temperature") == 0:
            _ANSWERED_GREEDY.add(key)
    return report


# --- The whole run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedStack:
    prometheus: Prometheus
    serving: Serving
    operator: Any
    started_at: float


@contextlib.contextmanager
def observed_stack(workdir: Path) -> Iterator[ObservedStack]:
    """Prometheus first (so it sees every counter from zero), then the serving stack and the operator."""
    started_at = time.time()
    operator_port, ray_port = free_port(), free_port()
    (workdir / "prometheus").mkdir(parents=True, exist_ok=True)
    prometheus = Prometheus(
        workdir / "prometheus", scrape_config(f"127.0.0.1:{operator_port}", f"127.0.0.1:{ray_port}")
    )
    prometheus.start()
    try:
        with (
            serving_stack(workdir, metrics_port=ray_port) as serving,
            operator_on_emulator(
                workdir,
                dashboard_url=serving.dashboard_url,
                metrics_port=operator_port,
                ray_metrics_url=f"http://127.0.0.1:{ray_port}",
                # Scraped before anything happens, so every counter's first increase is seen.
                before_create=lambda: prometheus.query(f'up{{job="{OPERATOR_JOB}"}} == 1'),
            ) as operator,
        ):
            yield ObservedStack(prometheus, serving, operator, started_at)
    finally:
        prometheus.stop()
