"""Kubernetes' syntax for names, label keys and values, and Secret keys.

Each check returns the reason a value is refused, or None. Patterns are matched whole with
``fullmatch``: ``$`` alone also matches before a final newline, and a name ending in one
could be stored but never addressed again (in a URL path, on a command line).
"""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# RFC 1123 DNS label: object names and namespaces (they become Jobs and Services).
NAME_RE = re.compile(rf"^{_LABEL}$")
# RFC 1123 DNS subdomain: Secret names, label key prefixes.
SUBDOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# The name part of a label or annotation key, and a non-empty label value.
QUALIFIED_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

MAX_LABEL = 63
MAX_SUBDOMAIN = 253


def dns_label_problem(value: str) -> str | None:
    if len(value) > MAX_LABEL or not NAME_RE.fullmatch(value):
        return (
            f"{value!r} is not a valid name: use at most {MAX_LABEL} lowercase letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return None


def dns_subdomain_problem(value: str) -> str | None:
    if len(value) > MAX_SUBDOMAIN or not SUBDOMAIN_RE.fullmatch(value):
        return (
            f"{value!r} is not a valid name: use at most {MAX_SUBDOMAIN} lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return None


def qualified_name_problem(key: str) -> str | None:
    """A label or annotation key: ``name`` or ``prefix/name`` (prefix a DNS subdomain)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns_subdomain_problem(prefix)):
        return f"key {key!r}: the prefix before '/' must be a DNS subdomain, e.g. example.com"
    if len(name) > MAX_LABEL or not QUALIFIED_RE.fullmatch(name):
        return (
            f"key {key!r}: the name must be at most {MAX_LABEL} letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value and (len(value) > MAX_LABEL or not QUALIFIED_RE.fullmatch(value)):
        shown = value if len(value) <= 80 else value[:60] + f"... ({len(value)} characters)"
        return (
            f"value {shown!r}: at most {MAX_LABEL} letters, digits, '-', '_' or '.', starting "
            "and ending with a letter or digit (or empty)"
        )
    return None


def secret_key_problem(key: str) -> str | None:
    if (
        len(key) > MAX_SUBDOMAIN
        or not SECRET_KEY_RE.fullmatch(key)
        or key in (".", "..")
        or key.startswith("..")
    ):
        return (
            f"key {key!r}: use at most {MAX_SUBDOMAIN} letters, digits, '-', '_' or '.', "
            "not '.', '..' or starting with '..'"
        )
    return None


def env_name_problem(key: str) -> str | None:
    if not ENV_NAME_RE.fullmatch(key):
        return (
            f"key {key!r} cannot become an environment variable: "
            "use letters, digits and '_', not starting with a digit"
        )
    return None
