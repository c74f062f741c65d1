"""Two operator processes with `--leader-elect` against the emulator: exactly one writes children;
killed, the other takes over once the Lease expires. The pure takeover rule is tested as a table."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llmdeploy.operator.leader import Action, decide
from llmdeploy.testing.kubeapi import KubeAPI

from .conftest import LLMD, RAYSERVICES, OperatorProcess, free_port, llmdeployment, wait_for

pytestmark = pytest.mark.integration

LEASE = ("coordination.k8s.io", "v1", "leases")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _lease(holder: str | None, renewed: datetime | None, duration_s: int = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration_s}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "l", "resourceVersion": "1"}, "spec": spec}


@pytest.mark.parametrize(
    ("lease", "action"),
    [
        (None, Action.CREATE),
        (_lease("me", NOW), Action.RENEW),
        (_lease("other", NOW - timedelta(seconds=5)), Action.WAIT),
        (_lease("other", NOW - timedelta(seconds=15)), Action.TAKE),
        (_lease("other", None), Action.TAKE),
        (_lease(None, NOW), Action.TAKE),
    ],
    ids=["absent", "ours", "held-alive", "expired", "never-renewed", "released"],
)
def test_takeover_rule(lease: dict[str, Any] | None, action: Action) -> None:
    assert decide(lease, "me", NOW) == action


def _candidate(kube: KubeAPI, tmp_path: Path, name: str) -> OperatorProcess:
    return OperatorProcess(
        tmp_path / "kubeconfig",
        tmp_path / f"{name}.log",
        metrics_port=free_port(),
        extra_args=("--leader-elect",),
        extra_env={
            "POD_NAME": name,
            "POD_NAMESPACE": "default",
            "LLMDEPLOY_LEASE_DURATION_S": "4",
            "LLMDEPLOY_LEASE_RENEW_S": "1",
            "LLMDEPLOY_LEASE_RETRY_S": "0.5",
        },
    )


def _holder(kube: KubeAPI) -> str | None:
    lease = kube.get(*LEASE, "default", "llmdeploy-operator")
    return None if lease is None else lease["spec"].get("holderIdentity")


def test_two_replicas_one_acts_and_the_other_takes_over(kube: KubeAPI, tmp_path: Path) -> None:
    a, b = _candidate(kube, tmp_path, "replica-a"), _candidate(kube, tmp_path, "replica-b")
    a.start()
    first = wait_for(lambda: _holder(kube), what="a leader", timeout=60, operator=a)
    assert first == "replica-a"
    b.start()
    time.sleep(2.0)  # b is up and polling the lease
    assert b.alive and "waiting for lease" in b.output
    kube.put_object(*LLMD, llmdeployment("one"))
    wait_for(lambda: kube.get(*RAYSERVICES, "default", "one"), what="the leader's RayService", operator=a)
    time.sleep(2.0)
    assert _holder(kube) == "replica-a"
    # The standby started no kopf at all: it never watched or wrote LLMDeployments.
    assert "now holds lease" not in b.output
    assert "Traceback" not in a.output + b.output

    kube.clear_log()
    a.stop(kill=True)
    killed_at = time.monotonic()
    wait_for(lambda: _holder(kube) == "replica-b", what="the standby taking over", timeout=30, operator=b)
    took_over_s = time.monotonic() - killed_at
    kube.put_object(*LLMD, llmdeployment("two"))
    wait_for(lambda: kube.get(*RAYSERVICES, "default", "two"), what="the new leader's RayService", operator=b)
    assert "now holds lease" in b.output
    # No duplicate children, nothing lost: one RayService per LLMDeployment.
    assert sorted(rs["metadata"]["name"] for rs in kube.objects(*RAYSERVICES, "default")) == ["one", "two"]
    assert took_over_s < 30
    b.stop()
    assert "Traceback" not in b.output, b.output[-4000:]


def test_a_standby_writes_nothing_while_the_leader_lives(kube: KubeAPI, tmp_path: Path) -> None:
    kube.put_object(
        *LEASE,
        {
            "metadata": {"name": "llmdeploy-operator", "namespace": "default"},
            "spec": {
                "holderIdentity": "someone-else",
                "leaseDurationSeconds": 3600,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        },
    )
    standby = _candidate(kube, tmp_path, "standby")
    kube.put_object(*LLMD, llmdeployment("untouched"))
    standby.start()
    try:
        wait_for(lambda: "waiting for lease" in standby.output, what="the standby waiting", timeout=60)
        time.sleep(3.0)
        assert standby.alive
        assert kube.writes() == [], [(w.method, w.path) for w in kube.writes()]
        assert kube.get(*RAYSERVICES, "default", "untouched") is None
        assert [r.resource for r in kube.requests if r.resource is not None] and {
            r.resource for r in kube.requests if r.resource is not None
        } == {"leases"}
    finally:
        standby.stop()
