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

from results import table, write  # noqa: E402

from llmdeploy.testing.kubeapi import KubeAPI  # noqa: E402
from llmdeploy.testing.operator_process import OperatorProcess, wait_for  # noqa: E402

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
    writes = _operator_writes(api)
    noop = [w for w in writes if not w.changed]
    events = [w for w in api.writes() if w.resource == "events"]
    return {
        "phase": name,
        "seconds": round(converged - started, 2),
        "writes": len(writes),
        "writes_per_object": round(len(writes) / count, 2),
        "noop_writes": len(noop),
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


def run(count: int, quiet_s: float) -> list[dict[str, Any]]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="LLMDeployments to reconcile (default 200)")
    parser.add_argument("--quiet-s", type=float, default=10.0, help="length of the steady/restart windows")
    args = parser.parse_args()
    phases = run(args.count, args.quiet_s)
    print(f"operator reconcile, {args.count} LLMDeployments, in-process Kubernetes API emulator")
    print(table(phases, ["phase", "seconds", "writes", "writes_per_object", "noop_writes", "events"]))
    path = write(
        "operator_reconcile",
        {"benchmark": "operator_reconcile", "count": args.count, "quiet_s": args.quiet_s, "phases": phases},
    )
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
