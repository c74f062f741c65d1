"""The queue-depth policy on the real stack: Ray Serve LLM + vLLM on this CPU, two engines at most.

An LLMDeployment with autoscaling (1 to 2 replicas, a queue target of 1 request per replica,
short delays) is rendered through the operator's `serveconfig.serving_args` and deployed with
`build_app`, as `llmdeploy serve` does. A sustained burst of concurrent requests (more than one
engine's batch) must raise the engine deployment to 2 running replicas, by the policy's own
decision (the Serve controller's log carries its reason), and an idle minute must bring it back
to 1. `serve.status()` is the judge. Along the way the engine replicas' `record_autoscaling_stats`
hook is called through a deployment handle: it must report vLLM's queue. The operator's readers
run on the real answers: the Serve details the dashboard serves (with the keys the emulator's
fake sends) and the head's metrics port, where the policy's queue-depth gauge must appear.

Slow (a few minutes; two engines start): deselect with `-m "not engine"`.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

import openai

from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.serve_state import engine_observation, policy_queue_depth
from llmdeploy.operator.serveconfig import serving_args
from llmdeploy.serving import app, tinymodel
from llmdeploy.serving.autoscaling import FINISHED_RATE_KEY, KV_CACHE_USAGE_KEY, RUNNING_KEY, WAITING_KEY
from llmdeploy.serving.config import APPLICATION_NAME, ServingArgs
from llmdeploy.testing.operator_process import free_port
from llmdeploy.testing.serve_details import serve_details

pytestmark = pytest.mark.engine

MANIFEST = """
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {name: tiny-scaling}
spec:
  model: {source: "builtin://tiny", name: tiny, maxModelLen: 512}
  accelerator: {type: cpu, kvCacheMemoryMiB: 64}
  batching: {maxNumSeqs: 4, maxNumBatchedTokens: 512}
  serving: {maxOngoingRequests: 8, maxQueuedRequests: 64}
  autoscaling:
    enabled: true
    minReplicas: 1
    maxReplicas: 2
    targetQueueDepth: 1
    scaleUpDelaySeconds: 5
    scaleDownDelaySeconds: 20
"""
ENGINE_DEPLOYMENT = "LLMServer:tiny-scaling"
READY_TIMEOUT_S = 300.0
SCALE_UP_TIMEOUT_S = 240.0
SCALE_DOWN_TIMEOUT_S = 180.0
# Ray exports metrics every few seconds; the gauge appears after the policy's first decisions.
METRICS_TIMEOUT_S = 60.0
# The head's Prometheus port of the running stack (set by the `served` fixture).
METRICS_PORT: dict[str, int] = {}
CLIENTS = 16
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # vLLM's CPU backend pins every engine to core 0 otherwise; two engines share both cores.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def rendered_args(tmp_path: Path) -> ServingArgs:
    manifest = tmp_path / "llmdeployment.yaml"
    manifest.write_text(MANIFEST)
    ((obj, _),) = load_manifests(str(manifest))
    return serving_args(obj.spec, name=obj.metadata.name, served_model_name=obj.served_model_name)


def running_replicas() -> tuple[int, str]:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    application = serve.status().applications.get(APPLICATION_NAME)
    engine = application.deployments.get(ENGINE_DEPLOYMENT) if application else None
    if engine is None:
        return 0, "no engine deployment"
    return engine.replica_states.get(ReplicaState.RUNNING, 0), f"{engine.status.value}: {engine.message}"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what()}")
        time.sleep(1.0)
    return time.monotonic() - started


def controller_log() -> str:
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return "\n".join(
        p.read_text(errors="replace") for p in sorted((session / "logs" / "serve").glob("controller_*.log"))
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    import ray
    from ray import serve

    args = rendered_args(tmp_path_factory.mktemp("manifest"))
    assert args.deployment.autoscaling and args.engine.max_num_seqs == 4
    with pytest.MonkeyPatch.context() as env:
        for key, value in ENGINE_ENV.items():
            env.setenv(key, os.environ.get(key, value))
        for key in (tinymodel.MODEL_CACHE_ENV, "VLLM_CACHE_ROOT", "TORCH_HOME"):
            if key not in os.environ:
                env.setenv(key, str(tmp_path_factory.mktemp(key.lower())))
        tinymodel.ensure_tiny_model("tiny")
        port = free_port()
        METRICS_PORT["port"] = free_port()
        # Logical CPUs: two engine replicas take 2 each, the ingress 1 or 2.
        ray.init(address="local", num_cpus=8, include_dashboard=False, _metrics_export_port=METRICS_PORT["port"])
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app.build_app(args.model_dump(mode="json")), name=APPLICATION_NAME, route_prefix="/")
            yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=2, timeout=120)
        finally:
            serve.shutdown()
            ray.shutdown()


def test_burst_adds_a_replica_and_idle_removes_it(served: openai.OpenAI) -> None:
    from ray import serve

    assert running_replicas()[0] == 1
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                served.completions.create(
                    model="tiny", prompt="scale " * 20, max_tokens=48, extra_body={"ignore_eos": True}
                )
            except openai.APIError as err:  # a failed request must fail the test, not end the load
                errors.append(err)

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
        try:
            # The engine replica reports vLLM's queue to the autoscaler (called here as Ray calls it).
            engine = serve.get_deployment_handle(ENGINE_DEPLOYMENT, APPLICATION_NAME)
            time.sleep(5)
            try:
                stats = engine.record_autoscaling_stats.remote().result()
            finally:
                # A handle's router keeps polling the controller from a background thread; left
                # running, it outlives this module's Ray and restarts one in the test process.
                engine.shutdown()
            scale_up_s = wait_until(
                lambda: running_replicas()[0] == 2, SCALE_UP_TIMEOUT_S, lambda: running_replicas()[1]
            )
        finally:
            stop.set()

    assert not errors, errors[:3]
    assert set(stats) == {WAITING_KEY, RUNNING_KEY, KV_CACHE_USAGE_KEY, FINISHED_RATE_KEY}
    assert stats[RUNNING_KEY] + stats[WAITING_KEY] > 0
    assert 0.0 <= stats[KV_CACHE_USAGE_KEY] <= 1.0
    # The move was the queue-depth policy's, with its reason (Ray's own policy logs none).
    assert "autoscaling 1 -> 2 replicas:" in controller_log()
    assert_operator_reads_the_real_answers(desired=2)

    scale_down_s = wait_until(lambda: running_replicas()[0] == 1, SCALE_DOWN_TIMEOUT_S, lambda: running_replicas()[1])
    assert "autoscaling 2 -> 1 replicas:" in controller_log()
    print(f"\nburst to 2 running replicas: {scale_up_s:.0f} s; idle back to 1: {scale_down_s:.0f} s")


def assert_operator_reads_the_real_answers(desired: int) -> None:
    """The operator's parsers on the real Serve details and metrics; the emulator's fake has their shape."""
    from ray import serve

    client = serve.context._get_global_client()
    assert client is not None
    details = client.get_serve_details()
    observed = engine_observation(details)
    assert observed is not None
    assert (observed.desired_replicas, observed.ready_replicas) == (desired, desired)
    real = details["applications"][APPLICATION_NAME]["deployments"][ENGINE_DEPLOYMENT]
    fake = serve_details(["RUNNING"], 1)["applications"][APPLICATION_NAME]["deployments"]["LLMServer:tiny"]
    assert set(fake) <= set(real) and set(fake["replicas"][0]) <= set(real["replicas"][0])
    # Ray 2.60 leaves autoscaling_detail out, as the fake does (so status needs the gauge below).
    assert "autoscaling_detail" not in real and "autoscaling_detail" not in fake

    url = f"http://127.0.0.1:{METRICS_PORT['port']}/metrics"
    depth: list[float | None] = [None]

    def gauge_seen() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            depth[0] = policy_queue_depth(response.read().decode())
        return depth[0] is not None

    wait_until(gauge_seen, METRICS_TIMEOUT_S, lambda: f"the policy's queue-depth gauge at {url}")
    assert depth[0] is not None and depth[0] >= 0
