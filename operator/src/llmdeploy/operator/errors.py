"""The operator's exceptions. User mistakes and cluster trouble are told apart."""

from __future__ import annotations


class LLMDeployError(Exception):
    """Base of every error the project raises on purpose."""


class SpecError(LLMDeployError):
    """The LLMDeployment is invalid; `problems` are one-line, field-named, actionable messages."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ManifestError(LLMDeployError):
    """A manifest file cannot be read as an LLMDeployment (YAML, kind, apiVersion)."""


class NotOwnedError(LLMDeployError):
    """A child with the desired name exists but is not controlled by this LLMDeployment."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(
            f"a {kind} named {name!r} already exists and is not owned by this LLMDeployment; "
            f"delete or rename it, or rename the LLMDeployment"
        )
