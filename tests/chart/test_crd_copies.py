"""The charts ship the generated CRD unchanged: byte-identical copies of crds/ (`make crd` writes all
three), and the CRD chart renders exactly that CRD plus its resource-policy annotation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .helm import CRD_CHART, OPERATOR_CHART, REPO, render

CRD_FILE = "llmdeploy.io_llmdeployments.yaml"
GENERATED = REPO / "crds" / CRD_FILE
COPIES = (OPERATOR_CHART / "crds" / CRD_FILE, CRD_CHART / "files" / CRD_FILE)


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(REPO)))
def test_chart_copy_is_byte_identical_to_the_generated_crd(copy: Any) -> None:
    assert copy.read_bytes() == GENERATED.read_bytes(), f"{copy} is stale: run `make crd`"


def test_crd_chart_renders_the_generated_crd_with_the_keep_policy() -> None:
    generated = yaml.safe_load(GENERATED.read_text())
    (kept,) = render(CRD_CHART)
    assert kept["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert kept == generated
    (plain,) = render(CRD_CHART, set_values=("keep=false",))
    assert plain == generated


def test_make_crd_refreshes_every_copy() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ncrd:", 1)[1].split("\n\n", 1)[0]
    for copy in COPIES:
        assert str(copy.relative_to(REPO)) in recipe, f"`make crd` does not write {copy}"
