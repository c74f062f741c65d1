"""`llmdeploy serve` end to end: the command a user runs, with fp8_per_channel quantization.

Runs the CLI in a child process on an LLMDeployment manifest, waits for its banner, talks to
the OpenAI API it prints, checks OpenAI-shaped 4xx errors, then stops it with Ctrl-C (SIGINT)
and checks that it exits cleanly and leaves no Ray or vLLM process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

import openai
import psutil

from llmdeploy.testing.operator_process import free_port

pytestmark = pytest.mark.engine

MANIFEST = """
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {name: tiny-fp8}
spec:
  model: {source: "builtin://tiny", name: tiny-fp8, maxModelLen: 256}
  quantization: {method: fp8_per_channel}
  accelerator: {type: cpu, kvCacheMemoryMiB: 32}
  batching: {maxNumSeqs: 8, maxNumBatchedTokens: 256}
  serving: {maxOngoingRequests: 16, maxQueuedRequests: 16}
"""
READY_TIMEOUT_S = 300


@dataclass
class Served:
    proc: subprocess.Popen[str]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    manifest = tmp / "tiny-fp8.yaml"
    manifest.write_text(MANIFEST)
    log = tmp / "serve.log"
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    for key in ("LLMDEPLOY_MODEL_CACHE", "VLLM_CACHE_ROOT", "TORCH_HOME"):
        env.setdefault(key, str(tmp / key.lower()))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmdeploy.cli",
                "serve",
                str(manifest),
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    served = Served(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "Press Ctrl-C to stop." not in served.output():
        assert proc.poll() is None, f"serve exited early:\n{served.output()[-3000:]}"
        assert time.monotonic() < deadline, f"serve not ready:\n{served.output()[-3000:]}"
        time.sleep(1)
    yield served
    if proc.poll() is None:
        proc.kill()


def test_banner_prints_the_base_url_and_a_request(served: Served) -> None:
    text = served.output()
    assert f"OpenAI base URL: {served.base_url}" in text
    assert re.search(r"curl .*/chat/completions", text)


def test_fp8_per_channel_model_answers_chat(served: Served) -> None:
    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny-fp8"]
    chat = client.chat.completions.create(model="tiny-fp8", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert chat.usage is not None and chat.usage.completion_tokens <= 5


def test_prompt_longer_than_max_model_len_is_an_openai_400(served: Served) -> None:
    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-fp8", prompt="word " * 400, max_tokens=4)
    assert err.value.status_code == 400
    assert isinstance(err.value.body, dict) and err.value.body.get("message")


def test_malformed_json_is_a_4xx_with_an_error_body(served: Served) -> None:
    status, body = _post(f"{served.base_url}/chat/completions", b'{"model": "tiny-fp8", "messages": [')
    assert 400 <= status < 500
    assert "error" in body or "detail" in body


def test_proxy_health_endpoint(served: Served) -> None:
    base = served.base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/-/healthz", timeout=10) as response:
        assert response.status == 200


def test_ctrl_c_stops_cleanly_without_stray_processes(served: Served) -> None:
    children = psutil.Process(served.proc.pid).children(recursive=True)
    assert children, "Ray and vLLM run in child processes"
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=120) == 0, served.output()[-3000:]
    assert "Stopped." in served.output()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
