"""The operator's log format: readable by default, JSON on request, the object on every line.

Kept apart from `settings` (whose kopf startup handler registers on import) so that the CLI and
tests can configure logging without registering handlers in kopf's global registry.
"""

from __future__ import annotations

import enum
from typing import Final

import kopf


class LogFormat(enum.StrEnum):
    """How the operator writes its log lines (`llmdeploy operator --log-format`)."""

    # Readable: `[time] logger [LEVEL] [namespace/name] message`.
    PLAIN = "plain"
    # One JSON object per line; per-object lines carry `object` with the LLMDeployment's
    # `namespace`, `name`, `kind` and `uid`, for log pipelines to filter on.
    JSON = "json"


# Key of the object reference in JSON lines (kopf's default name for it).
LOG_OBJECT_KEY: Final = "object"


def configure_logging(*, log_format: LogFormat = LogFormat.PLAIN, verbose: bool = False) -> None:
    """kopf's logging: every line a handler or timer logs names its LLMDeployment.

    kopf's per-object logger attaches the object's reference to each record; the text format
    prefixes `[namespace/name]`, the JSON format puts it under `object`. `verbose` is DEBUG.
    """
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format is LogFormat.JSON else kopf.LogFormat.FULL,
        log_prefix=log_format is LogFormat.PLAIN,
        log_refkey=LOG_OBJECT_KEY,
    )
