"""The real serving stack on this machine, for tests and benchmarks: Ray Serve LLM + vLLM on the CPU.

`local_stack(args)` starts a local Ray instance, deploys `build_app(args)` with `serve.run` and
yields where to reach it; on exit it shuts Serve and Ray down. The environment is the one the
engine tests need (offline, no telemetry, caches in a temporary folder). `serving_args_from_manifest`
renders an `LLMDeployment` manifest into the `ServingArgs` the operator would put into the
RayService, so tests drive the render contract end to end.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from llmdeploy.serving.config import APPLICATION_NAME, ServingArgs
from llmdeploy.testing.operator_process import free_port

# Offline, no telemetry; two engines share the cores instead of both pinning core 0.
ENGINE_ENV: Final = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}
# Where the engine writes caches, when the caller has not chosen.
CACHE_ENV: Final = ("LLMDEPLOY_MODEL_CACHE", "VLLM_CACHE_ROOT", "TORCH_HOME")


@dataclass(frozen=True)
class LocalStack:
    base_url: str
    metrics_url: str
    ready_s: float

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"


def serving_args_from_manifest(text: str) -> ServingArgs:
    """The `ServingArgs` the operator renders for a one-object LLMDeployment manifest."""
    from llmdeploy.operator.manifest import load_manifests
    from llmdeploy.operator.serveconfig import serving_args

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llmdeployment.yaml"
        path.write_text(text)
        ((obj, _),) = load_manifests(str(path))
    return serving_args(obj.spec, name=obj.metadata.name, served_model_name=obj.served_model_name)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def local_stack(
    args: ServingArgs,
    *,
    num_cpus: int = 4,
    workdir: Path | None = None,
    application: Callable[[ServingArgs], Any] | None = None,
) -> Iterator[LocalStack]:
    """Serve `args` locally until the block ends. `num_cpus` are Ray's logical CPUs: each CPU
    engine replica takes 2 (actor and engine worker), the ingress 1. `application` builds the
    Serve application instead of `build_app` (benchmarks swap in a baseline component)."""
    import ray
    from ray import serve

    from llmdeploy.serving import app, tinymodel

    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmdeploy-stack-")))
        env = {key: os.environ.get(key, value) for key, value in ENGINE_ENV.items()}
        for key in CACHE_ENV:
            env[key] = os.environ.get(key) or str(workdir / key.lower())
        stack.enter_context(_environment(env))
        if args.engine.model.startswith("builtin://"):
            tinymodel.ensure_tiny_model(tinymodel.builtin_kind(args.engine.model))
        http_port, metrics_port = free_port(), free_port()
        started = time.monotonic()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
            built = app.build_app(args.model_dump(mode="json")) if application is None else application(args)
            serve.run(built, name=APPLICATION_NAME, route_prefix="/")
            yield LocalStack(
                base_url=f"http://127.0.0.1:{http_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                ready_s=time.monotonic() - started,
            )
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {series name with labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def metric_total(samples: dict[str, float], name: str) -> float:
    """Sum of every series of `name` (any labels)."""
    return sum(value for series, value in samples.items() if re.fullmatch(rf"{name}(\{{.*\}})?", series))


def metric_by_label(samples: dict[str, float], name: str, label: str) -> dict[str, float]:
    """Sum of `name`'s series grouped by the value of `label`."""
    totals: dict[str, float] = {}
    for series, value in samples.items():
        if series == name or series.startswith(name + "{"):
            found = re.search(rf'[{{,]{label}="([^"]*)"', series)
            key = found.group(1) if found else ""
            totals[key] = totals.get(key, 0.0) + value
    return totals
