"""Real-cluster tests: opt-in, and silent towards any cluster unless asked.

Without `--with-e2e` every test in e2e/ is skipped at collection and nothing here runs kubectl.
With it, the tests use whatever cluster kubectl's current context names, which must have KubeRay,
the LLMDeployment CRD and the operator installed: e2e/run-kind.sh builds such a cluster with kind
and then runs this suite. An unreachable or unprepared cluster fails the session with the reason
(an explicit opt-in should not end in silent skips).

Settings: `--e2e-namespace` (LLMDEPLOY_E2E_NAMESPACE, default llmdeploy-e2e), `--e2e-ready-timeout`
in seconds (LLMDEPLOY_E2E_READY_TIMEOUT_S, default 1200: the first start pulls Ray's image and
builds the tiny model), `--e2e-serving-image` (LLMDEPLOY_E2E_SERVING_IMAGE; default: the
example's own spec.ray.image).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parent
SKIP_REASON = "needs a real cluster with KubeRay and the operator: pass --with-e2e (e2e/run-kind.sh sets one up)"
REQUIRED_CRDS = ("rayservices.ray.io", "llmdeployments.llmdeploy.io")

Kubectl = Callable[..., str]


def pytest_addoption(parser: pytest.Parser) -> None:
    # tests/conftest.py registers the same option when both folders are given to one pytest run.
    with contextlib.suppress(ValueError):
        parser.addoption("--with-e2e", action="store_true", help="Run e2e tests against the current cluster.")
    group = parser.getgroup("e2e", "real-cluster tests (e2e/)")
    group.addoption(
        "--e2e-namespace",
        default=os.environ.get("LLMDEPLOY_E2E_NAMESPACE", "llmdeploy-e2e"),
        help="Namespace the e2e LLMDeployment is created in (must exist and be watched).",
    )
    group.addoption(
        "--e2e-ready-timeout",
        type=float,
        default=float(os.environ.get("LLMDEPLOY_E2E_READY_TIMEOUT_S", "1200")),
        help="Seconds to wait for the LLMDeployment to become Ready.",
    )
    group.addoption(
        "--e2e-serving-image",
        default=os.environ.get("LLMDEPLOY_E2E_SERVING_IMAGE", ""),
        help="spec.ray.image for the example (a CPU serving image on kind); empty keeps the example's.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--with-e2e"):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    """Run kubectl with the current context; fail the test with its stderr when it fails."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("--with-e2e needs kubectl on PATH")

    def run(*args: str, input: str | None = None, timeout_s: float = 120) -> str:
        result = subprocess.run(
            [binary, *args], input=input, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result.stdout

    return run


@pytest.fixture(scope="session")
def cluster(kubectl: Kubectl) -> None:
    """The cluster kubectl reaches has what the suite needs; checked once per session."""
    binary = shutil.which("kubectl") or "kubectl"
    probe = subprocess.run(
        [binary, "cluster-info", "--request-timeout=10s"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.fail(f"--with-e2e was given but kubectl reaches no cluster:\n{probe.stderr.strip()}")
    for crd in REQUIRED_CRDS:
        found = subprocess.run(
            [binary, "get", "crd", crd, "-o", "name"], capture_output=True, text=True, timeout=60, check=False
        )
        if found.returncode != 0:
            pytest.fail(f"the cluster has no {crd} CRD: install KubeRay 1.7.0 and the chart (see e2e/run-kind.sh)")


@pytest.fixture(scope="session")
def e2e_namespace(request: pytest.FixtureRequest, cluster: None, kubectl: Kubectl) -> str:
    namespace: str = request.config.getoption("--e2e-namespace")
    kubectl("get", "namespace", namespace, "-o", "name")
    return namespace


@pytest.fixture(scope="session")
def ready_timeout_s(request: pytest.FixtureRequest) -> float:
    timeout: float = request.config.getoption("--e2e-ready-timeout")
    return timeout


@pytest.fixture(scope="session")
def serving_image(request: pytest.FixtureRequest) -> str:
    image: str = request.config.getoption("--e2e-serving-image")
    return image
