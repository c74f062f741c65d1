"""Structured logs without a cluster: the log-format options, and kopf's real per-object logger
in both formats. The JSON lines of a real run are checked in test_observed_stack.py.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import kopf
import pytest
from click.testing import CliRunner

from llmdeploy.cli import cli
from llmdeploy.operator.logs import LOG_OBJECT_KEY, LogFormat, configure_logging
from llmdeploy.serving.local import serve_logging_config


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line[:300]}")
    return parsed


def test_plain_operator_lines_are_prefixed_with_namespace_and_name() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(log_format=LogFormat.PLAIN)
        (handler,) = [h for h in root.handlers if type(h).__name__ == "_KopfStreamHandler"]
        handler.setStream(stream)  # type: ignore[attr-defined]
        body = {
            "apiVersion": "llmdeploy.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"namespace": "ml", "name": "llama"},
        }
        kopf.LocalObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings()).info("reconciled")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("[INFO    ] [ml/llama] reconciled"), line


def test_json_operator_lines_put_the_object_under_its_key() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(log_format=LogFormat.JSON, verbose=True)
        assert root.level == logging.DEBUG
        (handler,) = [h for h in root.handlers if type(h).__name__ == "_KopfStreamHandler"]
        handler.setStream(stream)  # type: ignore[attr-defined]
        body = {
            "apiVersion": "llmdeploy.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"namespace": "ml", "name": "llama"},
        }
        kopf.LocalObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings()).debug("detail")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    (line,) = _json_lines(stream.getvalue())
    assert line["message"] == "detail" and line["severity"] == "debug"
    assert line[LOG_OBJECT_KEY]["namespace"] == "ml" and line[LOG_OBJECT_KEY]["name"] == "llama"


@pytest.mark.parametrize("command", ["operator", "serve"])
def test_log_format_and_debug_are_options(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--log-format [plain|json]" in result.output and "--debug" in result.output
    bad = CliRunner().invoke(cli, [command, "--log-format", "xml"])
    assert bad.exit_code == 2 and "'xml' is not one of 'plain', 'json'" in bad.output


def test_serve_log_format_selects_ray_serves_encoding() -> None:
    from ray.serve.schema import LoggingConfig

    assert LoggingConfig(**serve_logging_config("json")).encoding == "JSON"
    assert LoggingConfig(**serve_logging_config("plain")).encoding == "TEXT"
    with pytest.raises(ValueError, match="plain or json"):
        serve_logging_config("xml")
