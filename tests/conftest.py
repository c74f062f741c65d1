"""Shared test options: `--update-golden` rewrites golden files; `--with-e2e` opts into e2e/."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KUBERAY_CRDS = REPO.parent / "shared" / "kuberay"
RAY_AUTH_MODE = "RAY_AUTH_MODE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the code.")
    parser.addoption("--with-e2e", action="store_true", help="Run e2e tests against the current cluster.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _disconnect_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _each_module_starts_without_ray() -> Iterator[None]:
    """No Ray connection crosses a module boundary.

    Engine modules start a local Ray in this process and shut it down; a Ray API touched after
    that silently starts a new default cluster, which then breaks the next module's `ray.init`
    (the prefix-aware router's background exchange did, on Ray Serve's router thread, until
    it learned to stop with the connection). Disconnect before and after every module.
    """
    auth_mode = os.environ.get(RAY_AUTH_MODE)
    _disconnect_ray()
    yield
    _disconnect_ray()
    # `ray.init` of a new local cluster sets RAY_AUTH_MODE=token in this process's environment,
    # which would turn on token auth for every later module's cluster.
    if auth_mode is None:
        os.environ.pop(RAY_AUTH_MODE, None)
    else:
        os.environ[RAY_AUTH_MODE] = auth_mode
