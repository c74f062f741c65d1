"""`python -m llmdeploy.operator`: run the operator on all namespaces (`llmdeploy operator` has options)."""

from __future__ import annotations

from llmdeploy.operator.runner import run

if __name__ == "__main__":
    run()
