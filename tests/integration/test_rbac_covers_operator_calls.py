"""The chart's RBAC against the operator's real traffic.

The real operator process runs a scenario against the API emulator (create, RayService ready,
spec change, invalid spec, delete); every request it made, as `(verb, group, resource,
namespace)`, must be granted by the rules the chart renders, and every granted `(verb, group,
resource)` must have been used or be in ALLOWED_UNUSED with its reason. A call in a namespace is
granted by a ClusterRole or by a Role in that namespace; a cluster-wide call (a list or watch
across namespaces, a cluster-scoped resource) only by a ClusterRole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.testing.kubeapi import KubeAPI

from ..chart.helm import NAMESPACE, render
from .conftest import LLMD, RAYSERVICES, OperatorProcess, llmdeployment, wait_for

pytestmark = pytest.mark.integration

# kopf's own client and the official kubernetes client (k8s.py); nothing else may call the API.
OPERATOR_USER_AGENTS = ("kopf/", "OpenAPI-Generator/")

# Granted by the chart but not exercised here, each with the reason it is granted anyway.
ALLOWED_UNUSED: frozenset[tuple[str, str, str]] = frozenset(
    {
        # kopf.adopt() sets blockOwnerDeletion on the RayService's ownerReference. Where the
        # OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift enables it), creating
        # such a child needs `update` on the owner's finalizers subresource; the emulator has no
        # admission plugins, and the operator never writes finalizers itself.
        ("update", "llmdeploy.io", "llmdeployments/finalizers"),
    }
)

Rule = tuple[str, str, str]  # (verb, API group, resource or resource/subresource)


@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str
    namespace: str | None

    @property
    def rule(self) -> Rule:
        return (self.verb, self.group, self.resource)


@dataclass
class Grants:
    """What the chart grants the operator's ServiceAccount: cluster-wide and per namespace."""

    cluster: set[Rule] = field(default_factory=set)
    namespaced: dict[str, set[Rule]] = field(default_factory=dict)

    def allows(self, call: Call) -> bool:
        if call.rule in self.cluster:
            return True
        return call.namespace is not None and call.rule in self.namespaced.get(call.namespace, set())

    def all_rules(self) -> set[Rule]:
        return self.cluster.union(*self.namespaced.values())


def _rules(role: dict[str, Any]) -> set[Rule]:
    return {
        (verb, group, resource)
        for rule in role.get("rules", [])
        for verb in rule.get("verbs", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }


def chart_grants(set_values: tuple[str, ...] = ()) -> Grants:
    """The rules bound to the operator's ServiceAccount in `helm template` of the chart."""
    objects = render(set_values=set_values)
    (deployment,) = (o for o in objects if o["kind"] == "Deployment")
    account = {
        "kind": "ServiceAccount",
        "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "namespace": deployment["metadata"]["namespace"],
    }
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    grants = Grants()
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding") or account not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        if binding["kind"] == "ClusterRoleBinding":
            grants.cluster |= _rules(role)
        else:
            grants.namespaced.setdefault(namespace, set()).update(_rules(role))
    return grants


def operator_calls(kube: KubeAPI) -> set[Call]:
    """Every API call the operator made, as RBAC sees it; fails on traffic from other clients."""
    calls = set()
    for record in kube.requests:
        assert record.user_agent.startswith(OPERATOR_USER_AGENTS), f"unexpected client: {record.user_agent}"
        if record.rbac is None:
            continue  # discovery (/api, /apis): granted to every authenticated user
        verb, group, resource, subresource = record.rbac
        calls.add(Call(verb, group, f"{resource}/{subresource}" if subresource else resource, record.namespace))
    return calls


def assert_covered(calls: set[Call], grants: Grants) -> None:
    denied = sorted((c.verb, c.group, c.resource, c.namespace or "<cluster>") for c in calls if not grants.allows(c))
    assert denied == [], f"the operator made calls the chart's RBAC does not grant: {denied}"
    used = {call.rule for call in calls}
    unused = sorted(grants.all_rules() - used - ALLOWED_UNUSED)
    assert unused == [], f"granted but never used (drop them, or justify them in ALLOWED_UNUSED): {unused}"
    stale = sorted(ALLOWED_UNUSED - grants.all_rules())
    assert stale == [], f"ALLOWED_UNUSED lists rules the chart no longer grants: {stale}"
    assert not ALLOWED_UNUSED & used, "an ALLOWED_UNUSED rule is used now: drop it from the allow-list"


def _status(kube: KubeAPI, name: str, namespace: str = "default") -> dict[str, Any]:
    return dict((kube.get(*LLMD, namespace, name) or {}).get("status") or {})


def _condition(kube: KubeAPI, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in _status(kube, name).get("conditions", []) if c["type"] == type_), {})


def _make_ready(kube: KubeAPI, name: str) -> None:
    ready = {"type": "Ready", "status": "True", "reason": "RunningServeApp", "message": ""}
    kube.patch_object(
        *RAYSERVICES,
        "default",
        name,
        {
            "status": {
                "conditions": [{**ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "activeServiceStatus": {
                    "applicationStatuses": {
                        "llm": {"status": "RUNNING", "serveDeploymentStatuses": {"LLMServer": {"status": "HEALTHY"}}}
                    }
                },
            }
        },
        subresource="status",
    )


def run_scenario(kube: KubeAPI, operator: OperatorProcess) -> None:
    """Create, ready, change, invalid spec, delete: every code path that calls the API."""
    kube.put_object(*LLMD, llmdeployment("tiny"))
    wait_for(
        lambda: kube.get(*RAYSERVICES, "default", "tiny") and _status(kube, "tiny").get("observedGeneration"),
        what="tiny reconciled",
        operator=operator,
    )
    _make_ready(kube, "tiny")
    wait_for(lambda: _status(kube, "tiny").get("phase") == "Ready", what="tiny Ready", operator=operator)
    kube.patch_object(*LLMD, "default", "tiny", {"spec": {"batching": {"maxNumSeqs": 7}}})
    wait_for(
        lambda: (
            "max_num_seqs: 7"
            in (kube.get(*RAYSERVICES, "default", "tiny") or {}).get("spec", {}).get("serveConfigV2", "")
        ),
        what="the RayService updated",
        operator=operator,
    )
    kube.put_object(*LLMD, llmdeployment("bad", quantization={"method": "awq"}))
    wait_for(
        lambda: _condition(kube, "bad", "Degraded").get("status") == "True", what="bad Degraded", operator=operator
    )
    wait_for(
        lambda: any(e["reason"] == "InvalidSpec" for e in kube.objects("", "v1", "events", "default")),
        what="the InvalidSpec event",
        operator=operator,
    )
    kube.delete(*LLMD, "default", "tiny")
    wait_for(lambda: kube.get(*RAYSERVICES, "default", "tiny") is None, what="RayService collected", operator=operator)


@pytest.fixture(scope="session")
def default_grants() -> Grants:
    """The chart's default RBAC (one helm template per session)."""
    return chart_grants()


def test_default_rbac_grants_exactly_what_the_operator_uses(
    kube: KubeAPI, operator: OperatorProcess, default_grants: Grants
) -> None:
    assert not default_grants.namespaced, "the default (all namespaces) must bind only a ClusterRole"
    run_scenario(kube, operator)
    assert_covered(operator_calls(kube), default_grants)


class NamespacedOperatorProcess(OperatorProcess):
    """`llmdeploy operator --namespace default`, as the chart runs it with watchNamespaces."""

    def __init__(self, *args: Any, namespaces: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.namespaces = namespaces

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llmdeploy.cli", "operator", "--standalone", "--liveness", ""]
        cmd += [f"--namespace={namespace}" for namespace in self.namespaces]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def namespaced_operator(kube: KubeAPI, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = NamespacedOperatorProcess(tmp_path / "kubeconfig", tmp_path / "operator.log", namespaces=("default",))
    proc.start()
    wait_for(
        lambda: any(r.verb == "watch" and r.resource == "llmdeployments" for r in kube.requests),
        what="the operator to start watching",
        timeout=60,
        operator=proc,
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.output, proc.output[-4000:]


def test_watch_namespaces_rbac_grants_exactly_what_the_operator_uses(
    kube: KubeAPI, namespaced_operator: OperatorProcess
) -> None:
    grants = chart_grants(set_values=("watchNamespaces={default}",))
    assert set(grants.namespaced) == {"default"}
    kube.ensure_namespace("elsewhere")
    kube.put_object(*LLMD, llmdeployment("outside", namespace="elsewhere"))
    run_scenario(kube, namespaced_operator)
    assert _status(kube, "outside", "elsewhere") == {}, "an unwatched namespace was reconciled"
    calls = operator_calls(kube)
    assert all(c.namespace in (None, "default") for c in calls), calls
    assert_covered(calls, grants)


@pytest.fixture
def elected_operator(kube: KubeAPI, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`llmdeploy operator --leader-elect` in the release namespace, as the chart runs it."""
    kube.ensure_namespace(NAMESPACE)
    proc = OperatorProcess(
        tmp_path / "kubeconfig",
        tmp_path / "operator.log",
        extra_args=("--leader-elect",),
        # Renew quickly, so the scenario sees every Lease verb (read, create, renew).
        extra_env={"POD_NAME": "operator-0", "POD_NAMESPACE": NAMESPACE, "LLMDEPLOY_LEASE_RENEW_S": "0.5"},
    )
    proc.start()
    wait_for(
        lambda: any(r.verb == "watch" and r.resource == "llmdeployments" for r in kube.requests),
        what="the elected operator to start watching",
        timeout=60,
        operator=proc,
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.output, proc.output[-4000:]


def test_leader_election_rbac_grants_exactly_what_the_operator_uses(
    kube: KubeAPI, elected_operator: OperatorProcess
) -> None:
    grants = chart_grants(set_values=("leaderElection.enabled=true",))
    assert set(grants.namespaced) == {NAMESPACE}, "the Lease is granted only in the release namespace"
    run_scenario(kube, elected_operator)
    calls = operator_calls(kube)
    assert {c.namespace for c in calls if c.group == "coordination.k8s.io"} == {NAMESPACE}
    assert_covered(calls, grants)
