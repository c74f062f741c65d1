"""e2e/ never reaches a cluster unless asked: without --with-e2e every test is skipped and kubectl is
never run; with it, an unreachable cluster fails with the reason instead of skipping. A fake
kubectl on PATH records every invocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE_KUBECTL = """#!/bin/sh
echo "$@" >> "{log}"
echo "The connection to the server localhost:8080 was refused" >&2
exit 1
"""


def _run_e2e(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(log=log))
    kubectl.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e", "-p", "no:cacheprovider", "-rs", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_without_the_option_everything_is_skipped_and_kubectl_never_runs(tmp_path: Path) -> None:
    result, calls = _run_e2e(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 skipped" in result.stdout, result.stdout
    assert "pass --with-e2e" in result.stdout
    assert calls == []


def test_with_the_option_an_unreachable_cluster_fails_with_the_reason(tmp_path: Path) -> None:
    result, calls = _run_e2e(tmp_path, "--with-e2e", "-x")
    assert result.returncode != 0
    assert "kubectl reaches no cluster" in result.stdout, result.stdout
    assert calls and all(call.startswith("cluster-info") for call in calls), calls
