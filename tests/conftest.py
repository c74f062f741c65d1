"""Shared test options: `--update-golden` rewrites golden files; `--with-e2e` opts into e2e/."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KUBERAY_CRDS = REPO.parent / "shared" / "kuberay"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from the code.")
    parser.addoption("--with-e2e", action="store_true", help="Run e2e tests against the current cluster.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
