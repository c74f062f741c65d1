"""The chart's alert rules through promtool: `check rules` on the rendered PrometheusRule, and the
unit tests in charts/llmdeploy-operator/tests/alerts/ (each alert fires when it should and stays
quiet when it should not). promtool comes with Debian's prometheus package (`make system-packages`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import yaml

pytestmark = pytest.mark.prometheus

REPO: Final = Path(__file__).resolve().parents[2]
ALERT_TESTS: Final = sorted((REPO / "charts" / "llmdeploy-operator" / "tests" / "alerts").glob("*_test.yaml"))
RULES_FILE: Final = "rules.yaml"


def _promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: `make system-packages` (Debian's prometheus package)"
    return binary


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups from `helm template` (every optional part on), as a rules file."""
    sys.path.insert(0, str(REPO / "tests" / "chart"))
    import helm

    objects = helm.render(values=(helm.OPERATOR_CHART / "ci" / "full-values.yaml",))
    (rule,) = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    folder = tmp_path_factory.mktemp("alerts")
    (folder / RULES_FILE).write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return folder


def test_promtool_checks_the_rendered_rules(rules_dir: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(rules_dir / RULES_FILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    rules = yaml.safe_load((REPO / "charts" / "llmdeploy-operator" / "files" / "alerts.yaml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == [RULES_FILE], path.name
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert names - fires == set(), f"no test where these fire: {sorted(names - fires)}"
    assert names - quiet == set(), f"no test where these stay quiet: {sorted(names - quiet)}"


@pytest.mark.parametrize("test_file", ALERT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(rules_dir: Path, test_file: Path) -> None:
    shutil.copy(test_file, rules_dir / test_file.name)
    result = subprocess.run(
        [_promtool(), "test", "rules", test_file.name], cwd=rules_dir, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
