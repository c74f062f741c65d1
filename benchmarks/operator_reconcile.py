"""Reconcile N LLMDeployments against the Kubernetes API emulator with the real operator.

Phases, each timed from its trigger until every object has converged:
  create   N objects created -> N RayServices exist and every status has observedGeneration 1
  ready    every RayService reports Ready -> every LLMDeployment is phase Ready
  steady   a quiet window: the operator should send no write at all
  update   every spec changed -> every RayService carries the change, observedGeneration 2,
           and the status is back to Ready with nothing in progress
  restart  operator killed and restarted -> nothing written

Reported per phase: seconds to converge, operator writes, writes per object, and no-op writes
(writes that changed nothing on the server). The goal is zero no-op writes and no writes in
the steady and restart phases.

    .venv/bin/python benchmarks/operator_reconcile.py [--count 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import table, write

from llmdeploy.testing.kube_faults import FaultPlan
from llmdeploy.testing.kubeapi import KubeAPI
from llmdeploy.testing.operator_process import OperatorProcess, wait_for

REPO = Path(__file__).resolve().parents[1]
LLMD = ("llmdeploy.io", "v1alpha1", "llmdeployments")
RS = ("ray.io", "v1", "rayservices")
REAL_RS_CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"
MINIMAL_RS_CRD = REPO / "tests" / "integration" / "data" / "rayservice-crd-minimal.yaml"
OPERATOR_AGENT = ("kopf/", "OpenAPI-Generator/")


def _manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "llmdeploy.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": f"llm-{i:04d}", "namespace": "default"},
        "spec": {
            "model": {"source": f"org/model-{i % 7}-8B"},
            "accelerator": {"type": "nvidia-l4"},
            "quantization": {"method": "fp8"},
            "replicas": 1 + i % 3,
        },
    }


def _operator_writes(api: KubeAPI) -> list[Any]:
    return [w for w in api.writes() if w.user_agent.startswith(OPERATOR_AGENT) and w.resource != "events"]


def _phase(api: KubeAPI, name: str, count: int, started: float, converged: float) -> dict[str, Any]:
    attempts = _operator_writes(api)
    writes = [w for w in attempts if w.status is not None and w.status < 400]
    noop = [w for w in writes if not w.changed]
    events = [w for w in api.writes() if w.resource == "events"]
    return {
        "phase": name,
        "seconds": round(converged - started, 2),
        "writes": len(writes),
        "writes_per_object": round(len(writes) / count, 2),
        "noop_writes": len(noop),
        "failed_writes": len(attempts) - len(writes),
        "faults": sum(1 for r in api.requests if r.fault),
        "events": len(events),
    }


def _settled(status: dict[str, Any]) -> bool:
    """The timer has mapped the (ready) child back onto Progressing=False."""
    return any(c["type"] == "Progressing" and c["status"] == "False" for c in status.get("conditions", []))


def _ready_status() -> dict[str, Any]:
    return {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "RunningServeApp",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "activeServiceStatus": {"applicationStatuses": {"llm": {"status": "RUNNING"}}},
    }


def run(count: int, quiet_s: float, faults: FaultPlan | None = None) -> list[dict[str, Any]]:
    """The phases' figures; with `faults`, the API server misbehaves from the first create on."""
    crd = REAL_RS_CRD if REAL_RS_CRD.is_file() else MINIMAL_RS_CRD
    phases = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        KubeAPI(crds=[REPO / "crds" / "llmdeploy.io_llmdeployments.yaml", crd]) as api,
    ):
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        operator = OperatorProcess(
            kubeconfig, Path(tmp) / "operator.log", status_interval_s=2.0, status_idle_s=0.5, verbose=False
        )
        operator.start()
        try:
            wait_for(
                lambda: any(r.verb == "watch" and r.resource == "llmdeployments" for r in api.requests),
                what="operator watching",
                timeout=60,
                operator=operator,
            )

            api.faults = faults

            def all_status(pred: Any) -> bool:
                return all(pred(o.get("status") or {}) for o in api.objects(*LLMD, "default"))

            api.clear_log()
            t0 = time.monotonic()
            for i in range(count):
                api.put_object(*LLMD, _manifest(i))
            wait_for(
                lambda: (
                    len(api.objects(*RS, "default")) == count and all_status(lambda s: s.get("observedGeneration") == 1)
                ),
                what="create converged",
                timeout=600,
                operator=operator,
                poll_s=0.25,
            )
            phases.append(_phase(api, "create", count, t0, time.monotonic()))

            api.clear_log()
            t0 = time.monotonic()
            for i in range(count):
                api.patch_object(*RS, "default", f"llm-{i:04d}", {"status": _ready_status()}, subresource="status")
            wait_for(
                lambda: all_status(lambda s: s.get("phase") == "Ready"),
                what="ready converged",
                timeout=600,
                operator=operator,
                poll_s=0.25,
            )
            phases.append(_phase(api, "ready", count, t0, time.monotonic()))

            api.clear_log()
            t0 = time.monotonic()
            time.sleep(quiet_s)
            phases.append(_phase(api, "steady", count, t0, time.monotonic()))

            api.clear_log()
            t0 = time.monotonic()
            for i in range(count):
                api.patch_object(*LLMD, "default", f"llm-{i:04d}", {"spec": {"batching": {"preset": "latency"}}})
            wait_for(
                lambda: (
                    all("max_num_seqs: 32" in rs["spec"]["serveConfigV2"] for rs in api.objects(*RS, "default"))
                    and all_status(
                        lambda s: s.get("observedGeneration") == 2 and s.get("phase") == "Ready" and _settled(s)
                    )
                ),
                what="update converged",
                timeout=600,
                operator=operator,
                poll_s=0.25,
            )
            phases.append(_phase(api, "update", count, t0, time.monotonic()))

            operator.stop(kill=True)
            api.faults = None  # a restart is measured on a healthy API server
            api.clear_log()
            t0 = time.monotonic()
            operator.start()
            wait_for(
                lambda: any(r.verb == "watch" and r.resource == "llmdeployments" for r in api.requests),
                what="operator watching again",
                timeout=60,
                operator=operator,
            )
            time.sleep(quiet_s)
            phases.append(_phase(api, "restart", count, t0, time.monotonic()))
            assert len(api.objects(*RS, "default")) == count
        finally:
            operator.stop()
    return phases


def fault_plan(rate: float, seed: int = 7) -> FaultPlan:
    """Errors (409/429/500/503), slow answers and dropped watches, each at `rate` per request."""
    return FaultPlan(
        seed=seed,
        error_rate=rate,
        delay_rate=rate,
        delay_range=(0.05, 0.5),
        watch_drop_rate=rate,
        watch_drop_after=(0.5, 5.0),
    )


COLUMNS = ["run", "phase", "seconds", "writes", "writes_per_object", "noop_writes", "failed_writes", "faults", "events"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="LLMDeployments to reconcile (default 200)")
    parser.add_argument("--quiet-s", type=float, default=10.0, help="length of the steady/restart windows")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="also run with this API fault rate (errors, delays, watch drops), side by side",
    )
    args = parser.parse_args()
    phases = [{"run": "healthy API", **p} for p in run(args.count, args.quiet_s)]
    if args.fault_rate:
        label = f"faults {args.fault_rate:.0%}"
        phases += [{"run": label, **p} for p in run(args.count, args.quiet_s, fault_plan(args.fault_rate))]
    print(f"operator reconcile, {args.count} LLMDeployments, in-process Kubernetes API emulator")
    print(table(phases, COLUMNS))
    name = "operator_reconcile_faults" if args.fault_rate else "operator_reconcile"
    path = write(
        name,
        {
            "benchmark": name,
            "count": args.count,
            "quiet_s": args.quiet_s,
            "fault_rate": args.fault_rate,
            "phases": phases,
        },
    )
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
