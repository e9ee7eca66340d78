"""detune's YAML reader: safe, scientific-notation floats, no duplicated keys, no anchor bombs.

Every YAML detune reads (train and study configs, ``key=value`` overrides, data YAMLs) goes through
``safe_load``, so a duplicated key or a value that YAML aliases blow up to gigabytes is refused while loading,
with the key and its line, before any tool prints or copies it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_YAML_SIZE = 1_000_000  # expanded size (nodes + scalar characters) of one YAML document


class YamlRefused(yaml.YAMLError):
    """A YAML document detune refuses although it parses: a duplicated key, or a value that expands beyond
    ``MAX_YAML_SIZE`` (an anchor/alias bomb) or refers to itself. ``problem`` and ``problem_mark`` as PyYAML's."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark

    def __str__(self) -> str:
        return self.problem


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), refuses duplicated
    keys (PyYAML keeps the last one silently) and documents that expand beyond ``MAX_YAML_SIZE``."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": explicit keys override it
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML reports it
                    continue
                if first is not key_node:
                    lines = f"lines {first.start_mark.line + 1} and {key_node.start_mark.line + 1}"
                    raise YamlRefused(f"key {key!r} appears twice ({lines}); keep one of them",
                                      key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_sizes(root: yaml.Node, sizes: dict[int, int]) -> None:
    """Size of every node as if its aliases were copied out (nodes + scalar characters), memoised per node,
    so a billion-laughs document is measured in microseconds. Raises ``RecursionError`` for a cycle."""
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            entered.discard(key)
            own = len(node.value) + 1 if isinstance(node, yaml.ScalarNode) else 1
            sizes[key] = own + sum(sizes[id(c)] for c in _children(node))
        elif key not in sizes:
            if key in entered:
                raise RecursionError("a YAML alias refers to a node that contains it")
            entered.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _check_expanded_size(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    path: list[str] = []
    node = root
    try:
        _expanded_sizes(root, sizes)
    except RecursionError:
        for key_node, value in (root.value if isinstance(root, yaml.MappingNode) else []):
            try:
                _expanded_sizes(value, {})
            except RecursionError:
                path, node = [str(key_node.value)], value
                break
        where = f"{'.'.join(path)!r}" if path else "the document"
        raise YamlRefused(f"{where} refers to itself (a recursive YAML anchor); write the value out",
                          node.start_mark) from None
    if sizes[id(root)] <= MAX_YAML_SIZE:
        return
    while isinstance(node, yaml.MappingNode) and node.value:  # descend to the key that holds the bulk
        key_node, value = max(node.value, key=lambda pair: sizes[id(pair[1])])
        path.append(str(key_node.value))
        node = value
    where = f"{'.'.join(path)!r}" if path else "the document"
    raise YamlRefused(f"{where} expands to more than {MAX_YAML_SIZE:,} nodes and characters (YAML anchors and "
                      "aliases multiply it); detune takes settings, not data: write a shorter value", node.start_mark)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML safely (no object construction), with scientific-notation floats.

    Raises:
        YamlRefused: a key appears twice in one mapping, or a value expands beyond ``MAX_YAML_SIZE`` or refers
            to itself (the message names the key and its line).
        yaml.YAMLError: the text is not YAML.
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


