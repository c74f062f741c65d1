"""Runs the operator: logging, the handlers, and kopf's main loop."""

from __future__ import annotations

from collections.abc import Sequence

import kopf


def run(
    *,
    namespaces: Sequence[str] = (),
    standalone: bool = False,
    liveness: str | None = None,
    verbose: bool = False,
    log_format: str = "plain",
) -> None:
    """Block running the operator; all namespaces unless `namespaces` names some."""
    import llmdeploy.operator.handlers  # noqa: F401  (registers the handlers)
    from llmdeploy.operator.settings import LogFormat, configure_logging  # registers the startup settings

    configure_logging(log_format=LogFormat(log_format), verbose=verbose)
    kopf.run(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
    )
