"""The one YAML reader for the files tinynas reads: constraint files, search spaces, spec files and run.yaml.

Plain ``yaml.safe_load`` accepts a mapping that gives a key twice and silently keeps the last value, so a
constraint file with ``sram:`` twice would search against whichever line came second. :func:`load` parses
exactly like ``yaml.safe_load`` (one document, the safe types) but refuses a repeated key with a
:class:`~nas.errors.UserError` that names the file, the key's place (``limits.sram``, ``stages[2].kernel``)
and both line numbers, so the CLI prints one line and exits 2.

Any other YAML problem is raised as the usual :class:`yaml.YAMLError`, so each caller keeps its own message
for a file that is not YAML at all.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from nas.errors import UserError

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load(text: str, source: str) -> Any:
    """Parse one YAML document of ``text`` (``source`` names it in errors); a repeated key is a UserError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_repeated_keys(loader, node, source, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_repeated_keys(loader: yaml.SafeLoader, node: Node, source: str, where: str, seen: set[int]) -> None:
    """Walk the composed tree before construction, where every key still has its line number.

    Keys are compared as the values YAML makes of them (``1`` and ``0x1`` are the same key, as they are for
    ``safe_load``). ``<<`` merge keys are skipped: overriding a merged-in key is what a merge is for. ``seen``
    holds the nodes already walked, so an alias to an anchored mapping is checked once and a recursive
    structure ends.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(loader, item, source, f"{where}[{i}]", seen)
        return
    if not isinstance(node, MappingNode):
        return
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        name = f"{where}.{key}" if where else str(key)
        line = key_node.start_mark.line + 1
        try:
            earlier = first_line.get(key)
        except TypeError:  # an unhashable (list or mapping) key: construction raises safe_load's own error for it
            earlier = None
        else:
            first_line.setdefault(key, line)
        if earlier is not None:
            raise UserError(source, name, f"each key once; '{key}' appears twice (lines {earlier} and {line}), "
                                          f"and YAML would silently keep only the second value")
        _refuse_repeated_keys(loader, value_node, source, name, seen)


def load_json(text: str, source: str) -> Any:
    """``json.loads`` that refuses a repeated key, as :func:`load` does for YAML (JSON keeps the last one)."""
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise UserError(source, key, f"each key once; '{key}' appears twice in one object")
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs)
