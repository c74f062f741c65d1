"""Test support shipped with the project: an in-process Kubernetes API for operator tests and benchmarks."""
