"""The real operator's reaction to generated invalid specs: an admission fault is refused by the
API server (422) and never reaches the operator; a spec that passes admission but cannot run is
`Degraded` with a Warning Event naming the field, no child, a bounded number of writes and no
traceback: never an exception or retry loop."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmdeploy.testing.kubeapi import ApiError, KubeAPI
from llmdeploy.testing.spec_strategies import MUTATIONS, Stage, valid_spec_bodies

from .conftest import LLMD, LLMD_CRD, RAYSERVICES, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

# The writes one refused spec may cost: kopf's bookkeeping annotations (up to two patches), the
# status patch with Degraded, and the Warning Event. A retry loop would exceed it.
MAX_WRITES_PER_INVALID_SPEC = 6
_names = (f"fuzz-{i}" for i in itertools.count())
# Faults that pass admission (the operator's own work) three times as often as the others.
FAULTS = [m for m in MUTATIONS if m.stage is Stage.VALIDATION] * 3 + [
    m for m in MUTATIONS if m.stage is Stage.ADMISSION and m.name != "unknown field"
]
INVALID = settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _warm_cel() -> None:
    """Evaluate the CRD's CEL rules once first: building them raises the recursion limit, which
    hypothesis refuses to see change inside a test."""
    with KubeAPI(crds=[LLMD_CRD]) as api:
        spec = {"model": {"source": "builtin://tiny"}, "autoscaling": {}, "responseCache": {}, "batching": {}}
        api.put_object(*LLMD, _object("warm", spec))


def _object(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": "default"}
    return {"apiVersion": "llmdeploy.io/v1alpha1", "kind": "LLMDeployment", "metadata": meta, "spec": spec}


def _degraded(kube: KubeAPI, name: str) -> dict[str, Any] | None:
    status = (kube.get(*LLMD, "default", name) or {}).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None)


@INVALID
@given(body=valid_spec_bodies(), data=st.data())
def test_invalid_specs_end_degraded_with_an_event_and_no_loop(
    kube: KubeAPI, operator: OperatorProcess, body: dict[str, Any], data: st.DataObject
) -> None:
    mutation = data.draw(st.sampled_from(FAULTS))
    event(mutation.stage.value)
    mutation.apply(data.draw, body)
    name = next(_names)
    if mutation.stage is Stage.ADMISSION:
        with pytest.raises(ApiError) as refused:
            kube.put_object(*LLMD, _object(name, body))
        assert refused.value.code == 422
        assert kube.get(*LLMD, "default", name) is None
        return
    kube.clear_log()
    kube.put_object(*LLMD, _object(name, body))
    condition = wait_for(lambda: _degraded(kube, name), what=f"{name} Degraded ({mutation.name})", operator=operator)
    assert condition["reason"] == "InvalidSpec"
    assert mutation.field in condition["message"], condition["message"]
    warning = wait_for(
        lambda: next(
            (
                e
                for e in kube.objects("", "v1", "events", "default")
                if e["involvedObject"]["name"] == name and e["reason"] == "InvalidSpec"
            ),
            None,
        ),
        what="the InvalidSpec event",
        operator=operator,
    )
    assert warning["type"] == "Warning"
    time.sleep(1.0)  # several timer periods: a loop would keep writing
    writes = [w for w in kube.writes() if w.name == name or (w.resource == "events")]
    assert len(writes) <= MAX_WRITES_PER_INVALID_SPEC, [(w.method, w.path) for w in writes]
    assert kube.get(*RAYSERVICES, "default", name) is None
    assert operator.alive and "Traceback" not in operator.output
