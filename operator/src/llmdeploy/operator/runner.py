"""Runs the operator: logging, the handlers, and kopf's main loop."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kopf


def run(
    *, namespaces: Sequence[str] = (), standalone: bool = False, liveness: str | None = None, verbose: bool = False
) -> None:
    """Block running the operator; all namespaces unless `namespaces` names some."""
    import llmdeploy.operator.handlers
    import llmdeploy.operator.settings  # noqa: F401  (registers the startup settings)

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    kopf.run(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness or None,
    )
