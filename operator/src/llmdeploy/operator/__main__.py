"""`python -m llmdeploy.operator`: run the operator (same as `llmdeploy operator`)."""

from __future__ import annotations

from llmdeploy.cli import main

if __name__ == "__main__":
    main(["operator"])
