"""Backend-agnostic logic: from an object and what a runtime observed, decide the next step.

Nothing here does IO; the local runtime and the Kubernetes operator both drive these functions.
"""
