"""Golden files pin what render makes of each example; `pytest --update-golden` rewrites them.

Review a golden diff like code: it is exactly what changes in users' clusters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmdeploy.cli import dump_yaml
from llmdeploy.operator.manifest import load_manifests
from llmdeploy.operator.render import Owner, render_rayservice

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CASES = Path(__file__).resolve().parent / "cases"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_rayservice_matches_golden(example: Path, update_golden: bool) -> None:
    ((obj, _),) = load_manifests(str(example))
    rendered = dump_yaml(
        [render_rayservice(Owner(obj.metadata.name, "default"), obj.spec, served_model_name=obj.served_model_name)]
    )
    case = CASES / example.stem
    golden = case / "rayservice.yaml"
    if update_golden:
        case.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example, case / "llmdeployment.yaml")
        golden.write_text(rendered)
    assert golden.is_file(), f"no golden file for {example.name}: run pytest --update-golden"
    assert (case / "llmdeployment.yaml").read_text() == example.read_text(), "example changed: --update-golden"
    assert rendered == golden.read_text()


def test_every_golden_case_has_an_example() -> None:
    assert sorted(p.name for p in CASES.iterdir() if p.is_dir()) == sorted(p.stem for p in EXAMPLES)
