"""Answers of the Ray dashboard's Serve API (`ServeInstanceDetails`), built for tests.

The shape is Ray Serve 2.60's (a unit test validates it against `ray.serve.schema`, and the
engine test runs the same parsers on the real stack's answer and checks these keys against it).
Ray 2.60 leaves `autoscaling_detail` out of every deployment; pass `decisions` or `metrics` only
to exercise the path for a Ray that fills it."""

from __future__ import annotations

from typing import Any


def serve_details(
    states: list[str],
    target: int,
    decisions: list[tuple[float, int, int, str]] | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A `ServeInstanceDetails` answer as the dashboard's /api/serve/applications/ sends it."""
    replicas = [
        {
            "replica_id": f"r{i}",
            "state": s,
            "pid": 100 + i,
            "actor_name": f"a{i}",
            "actor_id": f"x{i}",
            "node_id": "n",
            "node_ip": "10.0.0.1",
            "node_instance_id": "i",
            "start_time_s": 1.0,
            "log_file_path": None,
            "worker_id": "w",
        }
        for i, s in enumerate(states)
    ]
    engine: dict[str, Any] = {
        "name": "LLMServer:tiny",
        "status": "HEALTHY",
        "status_trigger": "CONFIG_UPDATE_COMPLETED",
        "message": "",
        "deployment_config": {"name": "LLMServer:tiny"},
        "target_num_replicas": target,
        "required_resources": {},
        "replicas": replicas,
    }
    ingress = {**engine, "name": "OpenAiIngress", "replicas": replicas[:1]}
    if decisions is not None or metrics is not None:
        engine["autoscaling_detail"] = {
            "scaling_status": "STABLE",
            "decisions": [
                {"timestamp_s": t, "prev_num_replicas": a, "curr_num_replicas": b, "reason": r}
                for t, a, b, r in decisions or []
            ],
            "metrics": metrics,
        }
    return {
        "controller_info": {},
        "proxy_location": "EveryNode",
        "proxies": {},
        "applications": {
            "llm": {
                "name": "llm",
                "route_prefix": "/",
                "docs_path": None,
                "status": "RUNNING",
                "message": "",
                "last_deployed_time_s": 1.0,
                "deployed_app_config": None,
                "source": "declarative",
                "deployments": {"LLMServer:tiny": engine, "OpenAiIngress": ingress},
            }
        },
    }


def ray_metrics_text(queue_depth: float | None, deployment: str = "LLMServer:tiny") -> str:
    """The head's Prometheus endpoint with the policy's gauge, labelled as Ray exports it."""
    lines = [
        "# HELP ray_serve_autoscaling_desired_replicas The raw autoscaling decision.",
        "# TYPE ray_serve_autoscaling_desired_replicas gauge",
        "ray_serve_autoscaling_desired_replicas{"
        f'Component="core_worker",application="llm",deployment="{deployment}"}} 1.0',
    ]
    if queue_depth is not None:
        lines += [
            "# HELP ray_llmdeploy_autoscaling_queue_depth_per_replica Requests waiting per replica.",
            "# TYPE ray_llmdeploy_autoscaling_queue_depth_per_replica gauge",
            "ray_llmdeploy_autoscaling_queue_depth_per_replica{"
            f'Component="core_worker",NodeAddress="10.0.0.1",SessionName="session",Version="2.60.0",'
            f'application="llm",deployment="{deployment}"}} {queue_depth}',
        ]
    return "\n".join(lines) + "\n"
