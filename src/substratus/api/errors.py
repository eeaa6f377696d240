"""The error a document that is not a valid object raises (a module of its own, so that the
command line can catch it without importing the models)."""

from __future__ import annotations


class ValidationFailed(ValueError):
    """A document is not a valid object; ``problems`` holds (field path, reason) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        super().__init__(f"{source}: invalid\n{lines}")
