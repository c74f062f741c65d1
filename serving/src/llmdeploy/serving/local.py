"""`llmdeploy serve`: one LLMDeployment on this machine, with a local Ray and the real vLLM.

The manifest goes through the same parsing, validation and argument rendering as in the
cluster (`llmdeploy.operator.manifest`, `serveconfig.serving_args`), then through the same
`build_app` the RayService's `import_path` names. What differs is only where it runs: a local
Ray instance instead of a KubeRay cluster. Progress shows while the model is prepared and the
engine loads; Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console

from llmdeploy.operator.accelerators import ACCELERATORS, AcceleratorType
from llmdeploy.operator.errors import LLMDeployError, ManifestError
from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.serveconfig import serving_args
from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.config import APPLICATION_NAME, ROUTE_PREFIX, ServingArgs

# Defaults for the processes Ray starts; a user's own setting wins.
ENGINE_ENV_DEFAULTS: Final = {
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # vLLM's CPU backend pins every engine to core 0 by default; let replicas share all cores.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


class ServeError(LLMDeployError):
    """The deployment could not start locally; the message says why in one line."""


@dataclass(frozen=True)
class LocalOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 8080
    verbose: bool = False
    log_format: str = "plain"


def load_one(path: str) -> tuple[str, ServingArgs, str]:
    """(name, serving arguments, accelerator type) of the single LLMDeployment in `path`."""
    manifests = load_manifests(path)
    if len(manifests) != 1:
        raise ManifestError(f"{path}: serve runs one LLMDeployment; this file has {len(manifests)}")
    ((obj, _),) = manifests
    args = serving_args(obj.spec, name=obj.metadata.name, served_model_name=obj.served_model_name)
    return obj.metadata.name, args, obj.spec.accelerator.type.value


def _require_accelerator(accelerator: str) -> None:
    if not ACCELERATORS[AcceleratorType(accelerator)].is_gpu:
        return
    import torch

    if not torch.cuda.is_available():
        raise ServeError(
            f"spec.accelerator.type {accelerator} needs an NVIDIA GPU and this machine has none; "
            "set accelerator.type: cpu to serve here"
        )


def _deployment_summary() -> str:
    from ray import serve

    status = serve.status().applications.get(APPLICATION_NAME)
    if status is None:
        return "waiting for the Serve controller"
    parts = [f"{name.split(':')[0]} {dep.status.value.lower()}" for name, dep in sorted(status.deployments.items())]
    return ", ".join(parts) or str(status.status.value).lower()


def _failure_message() -> str:
    from ray import serve

    status = serve.status().applications.get(APPLICATION_NAME)
    if status is None:
        return "the application did not start"
    messages = [dep.message for dep in status.deployments.values() if dep.message]
    text = status.message or "; ".join(messages) or str(status.status.value)
    # Ray's messages embed tracebacks; the last line names the cause.
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


@contextlib.contextmanager
def _ray(options: LocalOptions, replicas: int) -> Iterator[None]:
    import ray

    # Logical CPUs, not cores: each engine replica's placement group takes 2 and the ingress 1.
    ray.init(
        address="local",
        num_cpus=max(4, 2 * replicas + 2),
        include_dashboard=False,
        log_to_driver=options.verbose,
        logging_level=logging.INFO if options.verbose else logging.WARNING,
        _metrics_export_port=options.metrics_port,
    )
    try:
        yield
    finally:
        from ray import serve

        with contextlib.suppress(Exception):  # shutting down a half-started Serve must not mask the cause
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _deploy(args: ServingArgs, options: LocalOptions, console: Console) -> None:
    from ray import serve

    serve.start(
        http_options={"host": options.host, "port": options.port},
        logging_config=serve_logging_config(options.log_format),
    )
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            serve.run(
                app.build_app(args.model_dump(mode="json")),
                name=APPLICATION_NAME,
                route_prefix=ROUTE_PREFIX,
                logging_config=serve_logging_config(options.log_format),
            )
        except BaseException as exc:  # reported on the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="serve-run", daemon=True)
    started = time.monotonic()
    worker.start()
    with console.status("Loading the model and starting the engine...") as status:
        while worker.is_alive():
            worker.join(timeout=1.0)
            with contextlib.suppress(Exception):
                status.update(f"Starting: {_deployment_summary()} ({time.monotonic() - started:.0f} s)")
    if "error" in outcome:
        raise ServeError(f"the deployment failed to start: {_failure_message()}") from outcome["error"]


def _banner(name: str, args: ServingArgs, options: LocalOptions, console: Console, ready_s: float) -> None:
    base = f"http://{options.host}:{options.port}/v1"
    model = args.engine.served_model_name
    console.print(f"[bold green]{name} is serving[/] {model} (ready in {ready_s:.0f} s)")
    console.print(f"  OpenAI base URL: {base}")
    console.print(f"  Metrics:         http://{options.host}:{options.metrics_port}/metrics")
    console.print("  Try it:")
    console.print(
        f"    curl {base}/chat/completions -H 'Content-Type: application/json' \\\n"
        f'      -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], '
        f'"max_tokens": 32}}\'',
        highlight=False,
        soft_wrap=True,
    )
    console.print("Press Ctrl-C to stop.")


def _interrupt_once(signum: int, frame: object) -> None:
    """First Ctrl-C stops; later ones are ignored so Ray's shutdown is never cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def serve_logging_config(log_format: str) -> dict[str, Any]:
    """Ray Serve's logging for every deployment: `json` writes JSON lines, each with the
    `request_id` of the request it was written for (Ray adopts a client's X-Request-ID)."""
    if log_format not in ("plain", "json"):
        raise ValueError(f"log format must be plain or json, not {log_format!r}")
    return {"encoding": "JSON" if log_format == "json" else "TEXT", "enable_access_log": True}


def run_local(
    path: str,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    metrics_port: int = 8080,
    verbose: bool = False,
    log_format: str = "plain",
) -> None:
    """Serve the LLMDeployment in `path` until interrupted."""
    options = LocalOptions(host=host, port=port, metrics_port=metrics_port, verbose=verbose, log_format=log_format)
    console = Console(stderr=False, highlight=False)
    name, args, accelerator = load_one(path)
    _require_accelerator(accelerator)
    for key, value in ENGINE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not verbose:
        for noisy in ("ray", "ray.serve", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if tinymodel.is_builtin(args.engine.model):
            with console.status(f"Building {args.engine.model} (first use only)..."):
                tinymodel.ensure_tiny_model(tinymodel.builtin_kind(args.engine.model))
        app.check_model_sources(args)
    except (app.ModelSourceError, tinymodel.UnknownBuiltinModelError) as exc:
        raise ServeError(str(exc)) from exc
    replicas = max(args.deployment.num_replicas, args.deployment.min_replicas, 1)
    signal.signal(signal.SIGINT, _interrupt_once)
    started = time.monotonic()
    with _ray(options, replicas):
        try:
            _deploy(args, options, console)
            _banner(name, args, options, console, time.monotonic() - started)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("Stopping...")
    console.print("Stopped.")
