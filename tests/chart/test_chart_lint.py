"""`helm lint --strict` of both charts: the operator chart with each ci/ values file."""

from __future__ import annotations

from pathlib import Path

from .helm import CRD_CHART, OPERATOR_CHART, run_helm


def test_operator_chart_lints_strictly(ci_values: Path) -> None:
    # helm lint cannot be told which APIs the cluster serves (no --api-versions), so the KubeRay
    # check is switched off here; the template tests cover it.
    result = run_helm(
        "lint", "--strict", str(OPERATOR_CHART), "--values", str(ci_values), "--set", "kuberay.check=false"
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_crd_chart_lints_strictly() -> None:
    result = run_helm("lint", "--strict", str(CRD_CHART))
    assert "0 chart(s) failed" in result.stdout, result.stdout
