"""`llmdeploy render` and `llmdeploy crd`: good input prints YAML, bad input one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from llmdeploy.cli import cli

REPO = Path(__file__).resolve().parents[3]

GOOD = """
apiVersion: llmdeploy.io/v1alpha1
kind: LLMDeployment
metadata: {name: demo}
spec:
  model: {source: org/model-7b}
  accelerator: {type: nvidia-l4}
"""


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_render_prints_applyable_rayservices(tmp_path: Path) -> None:
    manifest = tmp_path / "demo.yaml"
    manifest.write_text(GOOD)
    code, out, _ = _run("render", str(manifest), "-n", "team-a")
    assert code == 0
    (obj,) = list(yaml.safe_load_all(out))
    assert obj["kind"] == "RayService"
    assert obj["metadata"]["namespace"] == "team-a"
    assert "import_path: llmdeploy.serving.app:build_app" in obj["spec"]["serveConfigV2"]


def test_render_reads_stdin() -> None:
    code, out, _ = _run("render", "-", stdin=GOOD)
    assert code == 0
    assert yaml.safe_load(out)["metadata"]["name"] == "demo"


def test_render_all_examples() -> None:
    examples = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    code, out, _ = _run("render", *examples)
    assert code == 0
    assert len(list(yaml.safe_load_all(out))) == len(examples)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("spec: [unclosed", "not valid YAML (line 1"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "is not an LLMDeployment"),
        (GOOD.replace("source: org/model-7b", "source: org/model-7b, sorce: typo"), "spec.model.sorce: unknown field"),
        (GOOD + "  autoscaling: {minReplicas: 5, maxReplicas: 2}\n", "minReplicas must not exceed"),
        (
            GOOD.replace("nvidia-l4", "cpu") + "  quantization: {method: awq}\n",
            "awq cannot run on accelerator.type cpu",
        ),
        (
            GOOD.replace("nvidia-l4", "nvidia-v100-32gb") + "  quantization: {method: fp8}\n",
            "compute capability >= 7.5",
        ),
        (GOOD.replace("nvidia-l4", "nvidia-tpu"), "spec.accelerator.type: Input should be"),
        (GOOD + "  replicas: -1\n", "spec.replicas: Input should be greater than or equal to 0"),
        ("", "no YAML documents"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(tmp_path: Path, text: str, needle: str) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    code, out, err = _run("render", str(manifest))
    assert code == 1
    assert out == ""
    assert needle in err
    assert "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


def test_missing_file() -> None:
    code, _, err = _run("render", "no/such/file.yaml")
    assert code == 1
    assert err.strip() == "error: no/such/file.yaml: no such file"


def test_notes_go_to_stderr_and_do_not_fail() -> None:
    code, out, err = _run("render", str(REPO / "examples" / "mistral-a100-fp8-weight-only.yaml"))
    assert code == 0
    assert "weight-only" in err
    assert yaml.safe_load(out)["kind"] == "RayService"


def test_crd_command_prints_the_crd() -> None:
    code, out, _ = _run("crd")
    assert code == 0
    assert yaml.safe_load(out)["metadata"]["name"] == "llmdeployments.llmdeploy.io"


def test_serve_refuses_a_missing_model_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(GOOD.replace("org/model-7b", "/no/such/model").replace("nvidia-l4", "cpu"))
    code, _, err = _run("serve", str(manifest))
    assert code == 1
    assert "/no/such/model does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_serve_refuses_a_gpu_spec_on_a_machine_without_gpus(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(GOOD)
    code, _, err = _run("serve", str(manifest))
    assert code == 1
    assert "needs an NVIDIA GPU and this machine has none" in err
