"""Answers of the Ray dashboard's Serve API (`ServeInstanceDetails`), built for tests.

The shape is Ray Serve 2.60's (a unit test validates it against `ray.serve.schema`)."""

from __future__ import annotations

from typing import Any


def serve_details(
    states: list[str],
    target: int,
    decisions: list[tuple[float, int, int, str]],
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
            "actor_class_name": "LLMServer",
        }
        for i, s in enumerate(states)
    ]
    engine = {
        "name": "LLMServer:tiny",
        "status": "HEALTHY",
        "status_trigger": "CONFIG_UPDATE_COMPLETED",
        "message": "",
        "deployment_config": {"name": "LLMServer:tiny"},
        "target_num_replicas": target,
        "required_resources": {},
        "replicas": replicas,
        "autoscaling_detail": {
            "scaling_status": "STABLE",
            "decisions": [
                {"timestamp_s": t, "prev_num_replicas": a, "curr_num_replicas": b, "reason": r}
                for t, a, b, r in decisions
            ],
            "metrics": metrics,
        },
    }
    ingress = {**engine, "name": "OpenAiIngress", "replicas": replicas[:1], "autoscaling_detail": None}
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
