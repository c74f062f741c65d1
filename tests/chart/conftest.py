"""Fixtures of the offline chart checks: helm renderings of the ci/ values files, made once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helm import OPERATOR_CHART, render

CI_VALUES = {
    "default": OPERATOR_CHART / "ci" / "default-values.yaml",
    "full": OPERATOR_CHART / "ci" / "full-values.yaml",
}


@pytest.fixture(scope="session", params=sorted(CI_VALUES))
def ci_values(request: pytest.FixtureRequest) -> Path:
    """Each ci/*-values.yaml of the operator chart."""
    path: Path = CI_VALUES[request.param]
    return path


@pytest.fixture(scope="session")
def rendered(ci_values: Path) -> list[dict[str, Any]]:
    """`helm template` of the operator chart with one ci values file (KubeRay and Prometheus APIs present)."""
    return render(values=(ci_values,))


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = find(objects, kind)
    return found
