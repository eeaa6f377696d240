"""A YAML loader for manifests: safe, bounded, and strict about duplicate keys.

PyYAML's SafeLoader builds anything it is given: aliases nest into gigabytes once the result
is turned into JSON, deep nesting overflows the stack, and a repeated key silently replaces
the first (which is also what two objects concatenated without ``---`` look like). This
loader refuses each of those with the line and column, and reads timestamps as strings, as
Kubernetes does (a date is not JSON).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from substratus.api.limits import MAX_ALIAS_NODES, MAX_ALIASES, MAX_DEPTH

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class YAMLLimitError(yaml.MarkedYAMLError):
    """A document goes past a bound or repeats a key; ``problem_mark`` says where."""


class ManifestLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._reset()

    def _reset(self) -> None:
        self._aliases = 0
        self._nodes = 0  # nodes of this document, aliases expanded
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed

    def compose_document(self) -> Node | None:
        self._reset()
        node: Node | None = super().compose_document()
        self._sizes.clear()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            node: Node | None = super().compose_node(parent, index)
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(problem=f"more than {MAX_ALIASES} aliases", problem_mark=mark)
            size = self._sizes.get(id(node))
            if size is None:
                raise YAMLLimitError(problem="an alias refers to its own anchor", problem_mark=mark)
            self._nodes += size
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise YAMLLimitError(
                    problem=f"aliases expand to more than {MAX_ALIAS_NODES} values",
                    problem_mark=mark,
                )
            return node
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark
                )
            before = self._nodes
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # merged keys may be overridden: that is what `<<` is for
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: the constructor reports it
                if first is not key_node.start_mark:
                    raise YAMLLimitError(
                        problem=(
                            f"duplicate key {key!r} (first at line {first.line + 1}); "
                            "separate objects with a '---' line"
                        ),
                        problem_mark=key_node.start_mark,
                    )
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]
        return result


# Timestamps stay strings: drop their implicit resolver from this loader's own copy.
ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_all(text: str) -> list[Any]:
    """Every document of ``text``; raises ``yaml.YAMLError`` (with a mark) when invalid."""
    return list(yaml.load_all(text, Loader=ManifestLoader))
