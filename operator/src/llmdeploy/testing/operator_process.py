"""`llmdeploy operator` in a child process, as it runs in its pod: for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OperatorProcess:
    """Starts, stops or kills the real operator against the cluster a kubeconfig names."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        *,
        status_interval_s: float = 0.5,
        status_idle_s: float = 0.3,
        metrics_port: int = 0,
        dashboard_url_template: str = "",
        verbose: bool = True,
        log_format: str = "plain",
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = {
            "KUBECONFIG": str(kubeconfig),
            "LLMDEPLOY_STATUS_INTERVAL_S": str(status_interval_s),
            "LLMDEPLOY_STATUS_IDLE_S": str(status_idle_s),
            "LLMDEPLOY_METRICS_PORT": str(metrics_port),
            # Empty: no Ray dashboard to read (the emulator runs no Ray clusters).
            "LLMDEPLOY_DASHBOARD_URL_TEMPLATE": dashboard_url_template,
        }
        self.metrics_port = metrics_port
        self.verbose = verbose
        self.log_format = log_format
        self.extra_args = extra_args
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llmdeploy.cli", "operator", "--standalone", "--liveness", ""]
        if self.verbose:
            cmd.append("--verbose")
        cmd += ["--log-format", self.log_format, *self.extra_args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def metrics(self) -> str:
        """The text of the operator's /metrics page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any],
    *,
    what: str,
    timeout: float = 20,
    operator: OperatorProcess | None = None,
    poll_s: float = 0.1,
) -> Any:
    """Poll `condition` until truthy; fail with the operator's log tail if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if operator is not None and operator.proc is not None and not operator.alive:
            raise AssertionError(f"operator exited while waiting for {what}:\n{operator.output[-4000:]}")
        time.sleep(poll_s)
    tail = operator.output[-4000:] if operator else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
