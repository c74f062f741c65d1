"""What the operator chart renders, offline: valid Kubernetes objects, a restricted pod that runs the
real CLI, wildcard-free RBAC bound to the operator's ServiceAccount, consistent ports and
selectors, the KubeRay template-time check and NOTES.txt."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from llmdeploy.cli import operator_command

from .conftest import find, the
from .helm import CRD_CHART, NAMESPACE, OFFLINE_API_VERSIONS, OPERATOR_CHART, render, run_helm, template_args

# The chart's kubeVersion floor and the Kubernetes of the helm/kubectl layer the checks use.
KUBERNETES_VERSIONS = ("1.27.0", "1.32.0")
# API groups of custom resources the chart may render; kubernetes-validate ships no schema for them.
CUSTOM_RESOURCE_GROUPS = frozenset({"monitoring.coreos.com"})
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
RBAC_RULE_FIELDS = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")


def _values(ci_values: Path) -> dict[str, Any]:
    return yaml.safe_load(ci_values.read_text()) or {}


def _validate(obj: dict[str, Any], version: str) -> None:
    if obj["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_validates_strictly(rendered: list[dict[str, Any]], version: str) -> None:
    assert rendered
    for obj in rendered:
        _validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_chart_renders_a_valid_crd(version: str) -> None:
    (crd,) = render(CRD_CHART)
    _validate(crd, version)


def test_defaults_render_the_operator_and_cluster_rbac_only() -> None:
    objects = render(values=(OPERATOR_CHART / "ci" / "default-values.yaml",))
    assert sorted(obj["kind"] for obj in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]


def test_every_object_carries_the_standard_labels(rendered: list[dict[str, Any]]) -> None:
    deployment = the(rendered, "Deployment")
    for obj in [*rendered, deployment["spec"]["template"]]:
        labels = obj["metadata"]["labels"]
        assert all(key in labels for key in STANDARD_LABELS), (obj.get("kind", "pod"), labels)
    # No legacy labels from the chart itself (ServiceMonitor/PrometheusRule labels are the user's).
    for obj in [deployment, deployment["spec"]["template"], the(rendered, "Service")]:
        assert not {"release", "heritage", "chart", "app"} & obj["metadata"]["labels"].keys()
    for obj in rendered:
        namespaced = obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}
        assert ("namespace" in obj["metadata"]) == namespaced, obj["kind"]


def test_selectors_use_only_name_and_instance(rendered: list[dict[str, Any]]) -> None:
    deployment = the(rendered, "Deployment")
    service = the(rendered, "Service")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    assert service["spec"]["selector"] == selector
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_pod_meets_the_restricted_pod_security_standard(rendered: list[dict[str, Any]]) -> None:
    pod = the(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert all("hostPath" not in volume for volume in pod["volumes"])
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context.get("privileged", False) is False
    # A read-only root needs a writable /tmp.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_container_runs_the_operator_cli_with_consistent_ports(rendered: list[dict[str, Any]], ci_values: Path) -> None:
    values = _values(ci_values)
    deployment = the(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["llmdeploy", "operator"]
    # The arguments parse with the real CLI: a renamed or removed flag fails here, not in a pod.
    params = operator_command.make_context("operator", list(container["args"])).params
    assert params["standalone"] is True
    assert params["namespaces"] == tuple(values.get("watchNamespaces", ()))
    liveness = urlparse(params["liveness"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (liveness.hostname, liveness.port, liveness.path) == ("0.0.0.0", ports["health"], "/healthz")
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMDEPLOY_METRICS_PORT"] == str(ports["metrics"])
    assert ports["metrics"] == values.get("metrics", {}).get("port", 8080)
    assert float(env["LLMDEPLOY_STATUS_INTERVAL_S"]) == values.get("statusIntervalSeconds", 10)
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_metrics_service_and_servicemonitor_reach_the_metrics_port(rendered: list[dict[str, Any]]) -> None:
    service = the(rendered, "Service")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("metrics", "metrics")
    for monitor in find(rendered, "ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_no_rbac_rule_has_a_wildcard(rendered: list[dict[str, Any]]) -> None:
    roles = find(rendered, "ClusterRole") + find(rendered, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in RBAC_RULE_FIELDS:
                assert not any("*" in item for item in rule.get(field, [])), (role["metadata"]["name"], rule)


def test_rbac_binds_the_operator_service_account(rendered: list[dict[str, Any]], ci_values: Path) -> None:
    watched = _values(ci_values).get("watchNamespaces", [])
    account = the(rendered, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert the(rendered, "ServiceAccount")["metadata"]["name"] == account
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in find(rendered, "ClusterRole")}
    roles |= {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in find(rendered, "Role")}
    bindings = find(rendered, "ClusterRoleBinding") + find(rendered, "RoleBinding")
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], namespace, ref["name"]) in roles
    assert sorted(r["metadata"]["namespace"] for r in find(rendered, "Role")) == sorted(watched)
    assert sorted(b["metadata"]["namespace"] for b in find(rendered, "RoleBinding")) == sorted(watched)
    cluster_resources = {res for rule in the(rendered, "ClusterRole")["rules"] for res in rule["resources"]}
    if watched:
        # Namespaced resources are granted per namespace only; cluster-wide is what kopf observes.
        assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    else:
        assert "namespaces" not in cluster_resources
        assert {"llmdeployments", "rayservices", "events"} <= cluster_resources


def test_template_fails_with_the_kuberay_message_when_the_api_is_absent() -> None:
    result = run_helm(*template_args(api_versions=()), check=False)
    assert result.returncode != 0
    assert "KubeRay is not installed" in result.stderr
    assert "--api-versions ray.io/v1/RayService" in result.stderr
    assert "kuberay.check=false" in result.stderr
    # The documented escape hatches both render.
    assert the(render(api_versions=("ray.io/v1/RayService",)), "Deployment")
    assert the(render(set_values=("kuberay.check=false",), api_versions=()), "Deployment")


def _notes(tmp_path: Path, api_versions: tuple[str, ...]) -> str:
    """NOTES.txt as `helm install` would print it (`helm template` never renders NOTES.txt)."""
    chart = tmp_path / "chart"
    shutil.copytree(OPERATOR_CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes-preview.yaml").write_text(
        '{{- define "notes-preview" }}' + notes + "{{ end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-preview\n"
        'data:\n  notes: {{ include "notes-preview" . | quote }}\n'
    )
    objects = yaml.safe_load_all(
        run_helm(*template_args(chart, set_values=["kuberay.check=false"], api_versions=api_versions)).stdout
    )
    preview = next(o for o in objects if o and o["metadata"]["name"] == "notes-preview")
    text: str = preview["data"]["notes"]
    return text


def test_notes_print_the_status_command_and_the_crd_upgrade(tmp_path: Path) -> None:
    notes = _notes(tmp_path, OFFLINE_API_VERSIONS)
    assert "kubectl get llmd -A" in notes
    assert "never upgrades" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/llmdeploy-operator/crds/" in notes
    assert "WARNING" not in notes


def test_notes_warn_when_kuberay_is_absent(tmp_path: Path) -> None:
    notes = _notes(tmp_path, ())
    assert "WARNING: this cluster has no KubeRay RayService API" in notes
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in notes


def _chart_without_monitoring_files(tmp_path: Path) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(OPERATOR_CHART, chart, ignore=shutil.ignore_patterns("dashboards", "files"))
    return chart


MONITORING_ON = ["dashboards.enabled=true", "prometheusRule.enabled=true", "serviceMonitor.enabled=true"]


def test_dashboards_and_alerts_render_nothing_while_their_files_are_absent(tmp_path: Path) -> None:
    chart = _chart_without_monitoring_files(tmp_path)
    out = run_helm(*template_args(chart, set_values=MONITORING_ON)).stdout
    kinds = sorted(o["kind"] for o in yaml.safe_load_all(out) if o)
    assert "PrometheusRule" not in kinds
    assert "ConfigMap" not in kinds
    assert "ServiceMonitor" in kinds


def test_dashboards_and_alerts_render_from_their_files(tmp_path: Path) -> None:
    chart = _chart_without_monitoring_files(tmp_path)
    (chart / "dashboards").mkdir()
    (chart / "dashboards" / "operator.json").write_text('{"title": "llmdeploy operator", "panels": []}\n')
    (chart / "files").mkdir()
    rule = {"alert": "Example", "expr": "vector(1) > 0", "labels": {"severity": "info"}}
    (chart / "files" / "alerts.yaml").write_text(yaml.safe_dump({"groups": [{"name": "example", "rules": [rule]}]}))
    objects = [o for o in yaml.safe_load_all(run_helm(*template_args(chart, set_values=MONITORING_ON)).stdout) if o]
    configmap = the(objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert yaml.safe_load(configmap["data"]["operator.json"])["title"] == "llmdeploy operator"
    _validate(configmap, KUBERNETES_VERSIONS[-1])
    assert the(objects, "PrometheusRule")["spec"] == {"groups": [{"name": "example", "rules": [rule]}]}
    # A malformed rules file fails the render instead of shipping a broken PrometheusRule.
    (chart / "files" / "alerts.yaml").write_text("rules: not-groups\n")
    result = run_helm(*template_args(chart, set_values=MONITORING_ON), check=False)
    assert result.returncode != 0
    assert "files/alerts.yaml must be a PrometheusRule spec" in result.stderr


def test_names_of_the_longest_release_fit_their_limits() -> None:
    # Helm allows release names of up to 53 characters; "<release>-llmdeploy-operator" is cut to 63
    # and the metrics Service's prefix to 55, so "-metrics" still fits a DNS-1035 label.
    release = "r" * 53
    args = ["template", release, str(OPERATOR_CHART), "--api-versions", "ray.io/v1/RayService"]
    objects = [o for o in yaml.safe_load_all(run_helm(*args).stdout) if o]
    for obj in objects:
        name = obj["metadata"]["name"]
        limit = 253 if obj["kind"] in {"ClusterRole", "ClusterRoleBinding"} else 63
        assert len(name) <= limit and not name.endswith("-"), (obj["kind"], name)
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
    assert the(objects, "Service")["metadata"]["name"].endswith("-metrics")
