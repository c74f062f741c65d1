"""The `llmdeploy` command line: `crd`, `render`, `serve` and `operator`.

Bad input ends with one line per problem on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from llmdeploy.operator.errors import LLMDeployError, ManifestError, SpecError

DEFAULT_EXAMPLE = "examples/tiny-cpu.yaml"
# Log formats of `serve` and `operator`: readable by default, JSON lines for log pipelines.
LOG_FORMATS = ("plain", "json")


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as `|` blocks, so rendered YAML stays readable."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def dump_yaml(objects: Sequence[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_LiteralDumper, sort_keys=False, width=100, explicit_start=True)


def _fail(exc: LLMDeployError) -> None:
    lines = exc.problems if isinstance(exc, SpecError) else [str(exc)]
    for line in lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmdeploy")
def cli() -> None:
    """Serve LLMs on Kubernetes from one LLMDeployment resource (Ray Serve + vLLM)."""


@cli.command()
@click.option("--reference", is_flag=True, help="Print the Markdown API reference instead.")
def crd(reference: bool) -> None:
    """Print the LLMDeployment CustomResourceDefinition (kubectl apply -f -)."""
    from llmdeploy.operator.crd import render_api_reference, render_crd_yaml

    click.echo(render_api_reference() if reference else render_crd_yaml(), nl=False)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--namespace", "-n", default=None, help="Namespace for objects whose manifest sets none.")
def render(files: tuple[str, ...], namespace: str | None) -> None:
    """Print the RayServices the operator would create for FILES ('-' reads stdin)."""
    from llmdeploy.operator.manifest import load_manifests
    from llmdeploy.operator.render import Owner, render_rayservice

    rendered = []
    try:
        for path in files:
            for obj, report in load_manifests(path, sys.stdin if path == "-" else None):
                own_ns = "namespace" in obj.metadata.model_fields_set
                ns = obj.metadata.namespace if own_ns else (namespace or "default")
                rendered.append(
                    render_rayservice(Owner(obj.metadata.name, ns), obj.spec, served_model_name=obj.served_model_name)
                )
                for note in report.notes:
                    click.echo(f"note: {path}: {obj.metadata.name}: {note}", err=True)
    except (ManifestError, SpecError) as exc:
        _fail(exc)
    click.echo(dump_yaml(rendered), nl=False)


def _default_example() -> str:
    """examples/tiny-cpu.yaml of the working directory, else of the checkout this runs from."""
    here = Path(DEFAULT_EXAMPLE)
    if here.is_file():
        return str(here)
    return str(Path(__file__).resolve().parents[4] / DEFAULT_EXAMPLE)


@cli.command()
@click.argument("file", required=False)
@click.option("--port", default=8000, show_default=True, help="HTTP port of the OpenAI-compatible API.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--metrics-port", default=8080, show_default=True, help="Port of Ray's Prometheus metrics.")
@click.option("--verbose", "--debug", "verbose", is_flag=True, help="Show Ray's and vLLM's own logs.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="plain",
    show_default=True,
    help="Serve's log files: plain text, or JSON lines that carry each request's request_id.",
)
def serve(file: str | None, port: int, host: str, metrics_port: int, verbose: bool, log_format: str) -> None:
    """Serve FILE (an LLMDeployment) on this machine with Ray Serve and vLLM.

    Without FILE, serves the bundled examples/tiny-cpu.yaml: a tiny model built locally.
    """
    path = file or _default_example()
    try:
        from llmdeploy.serving.local import run_local
    except ImportError as exc:
        click.echo(f"error: serving needs the [serving] extra and vLLM ({exc}); run `make serve`", err=True)
        sys.exit(1)
    try:
        run_local(path, port=port, host=host, metrics_port=metrics_port, verbose=verbose, log_format=log_format)
    except LLMDeployError as exc:
        _fail(exc)


@cli.command("operator")
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option(
    "--standalone/--peering",
    default=False,
    show_default=True,
    help="Standalone skips kopf peering (only for a single operator instance).",
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8081/healthz",
    show_default=True,
    help="Liveness endpoint URL ('' to disable).",
)
@click.option("--verbose", "--debug", "verbose", is_flag=True, help="Debug logging (kopf's and the operator's).")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="plain",
    show_default=True,
    help="plain: readable lines prefixed with [namespace/name]; json: one object per line, with `object`.",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help=(
        "Act only while holding a coordination.k8s.io Lease (in $POD_NAMESPACE, default `default`), "
        "so that of several replicas exactly one reconciles; the others wait and take over."
    ),
)
@click.option("--lease-name", default="llmdeploy-operator", show_default=True, help="Name of the Lease.")
def operator_command(
    namespaces: tuple[str, ...],
    standalone: bool,
    liveness: str,
    verbose: bool,
    log_format: str,
    leader_elect: bool,
    lease_name: str,
) -> None:
    """Run the operator (kopf) against the current cluster."""
    from llmdeploy.operator.leader import LeaseConfig
    from llmdeploy.operator.runner import run

    run(
        namespaces=namespaces,
        standalone=standalone,
        liveness=liveness,
        verbose=verbose,
        log_format=log_format,
        leader_election=LeaseConfig.from_env(name=lease_name) if leader_elect else None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="llmdeploy")
