"""Reading LLMDeployment manifests from files, for the command line.

A file may hold several YAML documents; every one must be an `LLMDeployment`. Problems are
reported as one line each, prefixed with the file and object they concern.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from llmdeploy.operator.api import API_VERSION, KIND, LLMDeployment
from llmdeploy.operator.errors import ManifestError, SpecError
from llmdeploy.operator.validation import Report, check_spec, format_validation_error


def _documents(stream: IO[str], where: str) -> Iterator[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(stream) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ManifestError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    if not docs:
        raise ManifestError(f"{where}: no YAML documents found")
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected a mapping (an LLMDeployment manifest), got {type(doc).__name__}")
        yield doc


def load_manifests(path: str, stream: IO[str] | None = None) -> list[tuple[LLMDeployment, Report]]:
    """Parse and check every LLMDeployment in `path` (or `stream`); raise on the first bad one."""
    where = "<stdin>" if path == "-" else path
    if stream is None:
        file = Path(path)
        if not file.is_file():
            raise ManifestError(f"{where}: no such file")
        with file.open(encoding="utf-8") as fh:
            docs = list(_documents(fh, where))
    else:
        docs = list(_documents(stream, where))
    out = []
    for doc in docs:
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        name = (doc.get("metadata") or {}).get("name", "?")
        if kind != KIND or api_version != API_VERSION:
            raise ManifestError(
                f"{where}: {kind or 'object'} {name!r} is not an LLMDeployment "
                f"(expected apiVersion: {API_VERSION}, kind: {KIND}; got {api_version}, {kind})"
            )
        try:
            obj = LLMDeployment.model_validate(doc)
        except ValidationError as exc:
            lines = format_validation_error(exc, prefix="")
            raise SpecError([f"{where}: {name}: {line.lstrip('.')}" for line in lines]) from exc
        report = check_spec(obj.spec)
        if not report.ok:
            raise SpecError([f"{where}: {name}: {finding}" for finding in report.errors])
        out.append((obj, report))
    return out
