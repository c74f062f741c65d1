"""`python -m llmdeploy.cli ...`, the same as the `llmdeploy` script."""

from llmdeploy.cli import main

main()
