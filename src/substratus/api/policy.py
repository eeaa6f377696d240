"""A ValidatingAdmissionPolicy for what the CRDs' schemas cannot check.

``spec.image`` (and a Server's or Notebook's ``spec.model``) takes a plain name or an object,
so its CRD schema has no type, and the API server compiles no ``x-kubernetes-validations``
rule on, under or about such a field. An admission policy's CEL sees it dynamically, so the
models' checks of those fields are made there, with the models' own messages: a user gets the
same reason from the cluster as from the local runtime. Generated beside the CRDs
(``deploy/crds/``) and printed by ``sub crds``; policies are GA since Kubernetes 1.30.
"""

from __future__ import annotations

from typing import Any

from substratus.api.compat import conflict
from substratus.api.kinds import GROUP, KINDS, VERSION, Resource

JSON = dict[str, Any]
POLICY_FILE = "admission-policy.yaml"

IMAGE = "object.spec.image"
_IMAGE_OBJECT = f"has({IMAGE}) && type({IMAGE}) == map"
_BUILD = "has(object.spec.build)"


def _check(expression: str, field: str, reason: str) -> JSON:
    return {"expression": expression, "message": f"{field}: {reason}", "reason": "Invalid"}


def _common() -> list[JSON]:
    rules = [
        _check(f"has({IMAGE}) || {_BUILD}", "spec.image", "required field is missing"),
        _check(
            f"!has({IMAGE}) || type({IMAGE}) == string || type({IMAGE}) == map",
            "spec.image",
            "must be an image name or {name, git, upload}",
        ),
        _check(
            f"!({_IMAGE_OBJECT}) || !(has({IMAGE}.git) && has({IMAGE}.upload))",
            "spec.image",
            "set at most one of git and upload",
        ),
        _check(
            f"!({_IMAGE_OBJECT}) || {_BUILD} || has({IMAGE}.name) || has({IMAGE}.git)"
            f" || has({IMAGE}.upload)",
            "spec.image",
            "set one of name, git or upload",
        ),
        # Untyped, the schema keeps unknown keys: the policy refuses them, as the models do.
        _check(
            f"!({_IMAGE_OBJECT}) || {IMAGE}.all(k, k in ['name', 'git', 'upload'])",
            "spec.image",
            "unknown field: use name, git or upload",
        ),
        _check(
            f"!({_IMAGE_OBJECT}) || !has({IMAGE}.name) || type({IMAGE}.name) == string",
            "spec.image.name",
            "must be a string",
        ),
        _check(
            f"!({_IMAGE_OBJECT}) || !has({IMAGE}.git) || !has({IMAGE}.git.url)"
            f" || string({IMAGE}.git.url).matches('\\\\S')",
            "spec.image.git.url",
            "must not be empty",
        ),
    ]
    for written in ("git", "upload"):
        for meant in ("git", "upload"):
            rules.append(
                _check(
                    f"!({_BUILD} && has(object.spec.build.{written}) && {_IMAGE_OBJECT}"
                    f" && has({IMAGE}.{meant}))",
                    f"spec.build.{written}",
                    conflict(f"image.{meant}"),
                )
            )
    return rules


def _reference(field: str) -> list[JSON]:
    """A reference written as a plain name or {name, namespace} (untyped in the schema)."""
    ref = f"object.spec.{field}"
    return [
        _check(
            f"!has({ref}) || type({ref}) == string || (type({ref}) == map && has({ref}.name))",
            f"spec.{field}.name",
            "required field is missing",
        ),
        _check(
            f"!has({ref}) || type({ref}) != map || {ref}.all(k, k in ['name', 'namespace'])",
            f"spec.{field}",
            "unknown field: use name and namespace",
        ),
    ]


def _model_reference(required: bool) -> list[JSON]:
    model = "object.spec.model"
    rules = [
        _check(
            f"!(has(object.spec.modelName) && has({model}))",
            "spec.modelName",
            conflict("model"),
        ),
        *_reference("model"),
    ]
    if required:
        rules.insert(
            0,
            _check(
                f"has({model}) || has(object.spec.modelName)",
                "spec.model",
                "required field is missing",
            ),
        )
    return rules


def _rules(cls: type[Resource]) -> list[JSON]:
    if cls.KIND == "Server":
        return _common() + _model_reference(required=True)
    if cls.KIND == "Notebook":
        return _common() + _model_reference(required=False) + _reference("dataset")
    return _common()


def policies() -> list[JSON]:
    """A policy and its binding per kind."""
    docs: list[JSON] = []
    for cls in KINDS.values():
        name = f"substratus-{cls.PLURAL}"
        docs.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [GROUP],
                                "apiVersions": [VERSION],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": [cls.PLURAL],
                            }
                        ]
                    },
                    "validations": _rules(cls),
                },
            }
        )
        docs.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Deny"]},
            }
        )
    return docs
