"""CEL versions of the models' checks, for the CRDs' ``x-kubernetes-validations``.

Rules are by model class name (subclasses inherit); a rule is a dict, or a function of the class
(to read its defaults). Messages are the models' own, so a user sees the same reason from the
cluster and locally. Not expressible: the key and value checks of spec.params and spec.env,
because CEL sees no value of a field without a type (the map values there are
x-kubernetes-preserve-unknown-fields).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from substratus.api.compat import RENAMED, conflict

JSON = dict[str, Any]
Rule = JSON | Callable[[type[BaseModel]], JSON]


def _lineage(cls: type) -> set[str]:
    return {c.__name__ for c in cls.__mro__}


def _original_rules() -> dict[str, list[Rule]]:
    """Refuse both spellings at once (compat.py), where CEL can see both fields: a Model's
    model/baseModel and dataset/trainingDataset. CEL sees no field without a type, so the
    string-or-object fields (image, a Server's model) and their siblings' conflicts with them
    (build vs image, modelName vs model) are checked by the admission policy (policy.py)."""
    return {
        "ModelSpec": [
            {
                "rule": f"!(has(self.{written}) && has(self.{meant}))",
                "message": conflict(meant),
                "fieldPath": f".{written}",
            }
            for written, meant in RENAMED["ModelSpec"].items()
        ]
    }


def _autoscaling_bounds(cls: type[BaseModel]) -> JSON:
    low, high = (cls.model_fields[f].default for f in ("min_replicas", "max_replicas"))
    return {
        "rule": (
            f"(has(self.minReplicas) ? self.minReplicas : {low}) <= "
            f"(has(self.maxReplicas) ? self.maxReplicas : {high})"
        ),
        "message": "minReplicas must not exceed maxReplicas",
    }


_RULES: dict[str, list[Rule]] = {
    "Image": [
        {
            "rule": "!(has(self.git) && has(self.upload))",
            "message": "set at most one of git and upload",
        },
        {
            "rule": "has(self.name) || has(self.git) || has(self.upload)",
            "message": "set one of name, git or upload",
        },
    ],
    "GitSource": [
        {
            "rule": "self.url.matches(r'\\S')",
            "message": "must not be empty",
            "fieldPath": ".url",
        },
        {
            "rule": "!(has(self.branch) && self.branch != '' && has(self.tag) && self.tag != '')",
            "message": "set branch or tag, not both",
        },
        {
            "rule": (
                "!has(self.path) || (!self.path.startsWith('/') && "
                "!self.path.matches('(^|/)[.][.](/|$)'))"
            ),
            "message": "path must be relative and stay inside the repository",
        },
    ],
    "BuildSpec": [
        {"rule": "has(self.git) || has(self.upload)", "message": "set git or upload"},
        {
            "rule": "!(has(self.git) && has(self.upload))",
            "message": "set at most one of git and upload",
        },
    ],
    "Autoscaling": [_autoscaling_bounds],
    **_original_rules(),
}

# Spec fields the models also take as a plain string (a name), by (class, JSON name): image
# (`image: NAME`, as the original project writes it), model and dataset (as the seed does).
SHORTHAND_FIELDS: set[tuple[str, str]] = {
    ("CommonSpec", "image"),
    ("NotebookSpec", "model"),
    ("NotebookSpec", "dataset"),
    ("ServerSpec", "model"),
}


def cel_rules(cls: type[BaseModel]) -> list[JSON]:
    """The CEL ``x-kubernetes-validations`` for objects of model class ``cls``."""
    lineage = _lineage(cls)
    return [
        r if isinstance(r, dict) else r(cls)
        for owner, rs in _RULES.items()
        if owner in lineage
        for r in rs
    ]
