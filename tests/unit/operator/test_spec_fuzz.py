"""Property-based tests over the LLMDeployment spec: valid specs render objects that KubeRay and
Ray Serve accept; every single fault is caught, at admission (the CRD's schema and CEL rules, as
the emulator evaluates them) or by the operator's validation, with a message naming the field;
and no input, however malformed, raises anything but a `SpecError`.

How many cases ran is printed at the end of the module (and in `--hypothesis-show-statistics`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmdeploy.operator.errors import SpecError
from llmdeploy.operator.render import Owner, render_rayservice
from llmdeploy.operator.validation import parse_spec
from llmdeploy.serving.config import ServingArgs
from llmdeploy.testing._kube_schema import CompiledSchema, FieldError, compile_schema
from llmdeploy.testing.spec_strategies import MUTATIONS, Mutation, Stage, valid_spec_bodies

REPO = Path(__file__).resolve().parents[3]
LLMD_CRD = REPO / "crds" / "llmdeploy.io_llmdeployments.yaml"
KUBERAY_RAYSERVICE_CRD = REPO.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"

# Examples per property (CI default 200; raise it locally for a longer search).
EXAMPLES = int(os.environ.get("LLMDEPLOY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
TRIED: Counter[str] = Counter()
# Words with which a validation message tells the user what to do instead.
_FIX = re.compile(r"\b(use|set|choose|raise|lower|remove|add)\b")


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    # Warm up first: importing Ray and building CEL programs raise the recursion limit, which
    # hypothesis refuses to see change inside a test.
    pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    _admit({"model": {"source": "builtin://tiny"}, "autoscaling": {}, "responseCache": {}, "batching": {}})
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = "spec fuzz cases tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"{line} (total {sum(TRIED.values())})")


def _openapi(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    return dict(next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"])


@cache
def _llmd_schema() -> CompiledSchema:
    return compile_schema(_openapi(LLMD_CRD, "v1alpha1"))


@cache
def _rayservice_schema() -> CompiledSchema:
    if not KUBERAY_RAYSERVICE_CRD.is_file():
        pytest.skip("KubeRay's RayService CRD (test data) is not present")
    return compile_schema(_openapi(KUBERAY_RAYSERVICE_CRD, "v1"))


def _admit(spec: dict[str, Any]) -> tuple[list[FieldError], dict[str, Any]]:
    """What kube-apiserver does with the object: prune, default, validate (schema, then CEL)."""
    obj: dict[str, Any] = {
        "apiVersion": "llmdeploy.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": yaml.safe_load(yaml.safe_dump(spec)),  # a copy, as it would come over the wire
    }
    schema = _llmd_schema()
    schema.prune(obj)
    schema.default(obj)
    return schema.validate(obj, None), obj["spec"]


def _render(spec_body: dict[str, Any]) -> dict[str, Any]:
    spec, _ = parse_spec(spec_body)
    return render_rayservice(Owner("fuzz", "default"), spec)


def _check_rendered(spec_body: dict[str, Any]) -> None:
    rendered = _render(spec_body)
    pruned = yaml.safe_load(yaml.safe_dump(rendered))
    schema = _rayservice_schema()
    errors = schema.validate(rendered, None)
    assert errors == [], [e.message for e in errors]
    schema.prune(pruned)
    assert pruned == rendered, "render wrote fields KubeRay's schema does not know (they would be dropped)"
    serve_schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    config = yaml.safe_load(rendered["spec"]["serveConfigV2"])
    (app,) = serve_schema.ServeDeploySchema.model_validate(config).applications
    ServingArgs.model_validate(app.args)


@FUZZ
@given(valid_spec_bodies())
def test_valid_specs_are_admitted_and_render_objects_kuberay_and_serve_accept(body: dict[str, Any]) -> None:
    TRIED["valid"] += 1
    errors, admitted = _admit(body)
    assert errors == [], [e.message for e in errors]
    _check_rendered(admitted)  # what the operator sees: the stored, defaulted object
    # `llmdeploy render` and `serve` read the file as written: the CRD's defaults must not
    # change what is rendered.
    assert _render(body) == _render(admitted)


def _names(message: str, field: str) -> bool:
    return field in message or f"spec.{field}" in message


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
@settings(FUZZ, max_examples=max(EXAMPLES // 20, 5))
@given(body=valid_spec_bodies(), data=st.data())
def test_each_single_fault_is_caught_with_a_message_naming_the_field(
    mutation: Mutation, body: dict[str, Any], data: st.DataObject
) -> None:
    mutation.apply(data.draw, body)
    TRIED[f"fault ({mutation.stage.value})"] += 1
    errors, admitted = _admit(body)
    admission = "; ".join(e.message for e in errors)
    if mutation.stage is Stage.ADMISSION and mutation.name != "unknown field":
        assert errors, f"{mutation.name}: admitted {body}"
        assert _names(admission, mutation.field), admission
    else:
        assert errors == [], f"{mutation.name}: refused at admission: {admission}"
    if mutation.name == "unknown field":
        # The API server prunes unknown fields (kubectl's strict field validation refuses them).
        assert "quantisation" not in admitted["model"]
    # Whatever reaches the operator's validation (a file given to render/serve, an API server
    # without the rules) is refused there too, one line per problem naming the field.
    with pytest.raises(SpecError) as refused:
        parse_spec(body)
    problems = refused.value.problems
    assert problems and all(p.startswith("spec") for p in problems), problems
    assert any(_names(p, mutation.field) for p in problems), problems
    if mutation.stage is Stage.VALIDATION:
        assert any(_FIX.search(p) for p in problems), f"no fix offered: {problems}"


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
        max_leaves=8,
    )


@st.composite
def _garbled(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with one value anywhere in it replaced by arbitrary JSON."""
    body = draw(valid_spec_bodies())
    node: Any = body
    while isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or draw(st.booleans()):
            node[key] = draw(_json_values())
            break
        node = node[key]
    return body


@FUZZ
@given(_garbled())
def test_arbitrary_values_anywhere_never_raise_anything_but_a_spec_error(body: dict[str, Any]) -> None:
    TRIED["garbled"] += 1
    errors, admitted = _admit(body)
    try:
        parse_spec(body)
    except SpecError as exc:
        event("refused by validation")
        problems = exc.problems
    else:
        problems = []
    assert all(p.startswith("spec") for p in problems), problems
    if not problems:
        event("accepted by validation")
        _check_rendered(body)
    if not errors:
        event("admitted")
        try:
            parse_spec(admitted)
        except SpecError:
            return
        _check_rendered(admitted)


def test_the_fault_catalogue_covers_both_stages() -> None:
    stages = Counter(m.stage for m in MUTATIONS)
    assert stages[Stage.ADMISSION] >= 20 and stages[Stage.VALIDATION] >= 5, stages
