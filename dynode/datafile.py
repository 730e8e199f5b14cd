"""Reading YAML/JSON data files (run configs, sweep files, model specs) as data, safely.

A data file is parsed with ``yaml.SafeLoader`` (no Python objects, no code) and bounded before
anything is built from it:

* every key appears once per mapping (:class:`UniqueKeyLoader`: YAML would keep the last
  silently);
* the text is UTF-8;
* the *composed* document -- YAML's node graph, where an alias ``*a`` points to the node of its
  anchor ``&a`` -- is measured once per distinct node: its nesting depth and how many values
  its aliases add when expanded. Nine anchors of nine aliases each are ten lines of text and
  9**9 (387 million) values once expanded; they are refused here in linear time, before the
  data is constructed, validated or walked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dynode.errors import ConfigurationError

__all__ = ["UniqueKeyLoader", "read_text", "load_yaml", "read_config", "MAX_DEPTH", "MAX_ALIAS_VALUES"]

MAX_DEPTH = 64
"""Nesting levels of lists and mappings a data file may have (a run config has a few; a per-unit
``tau`` in a model spec has the population's rank)."""

MAX_ALIAS_VALUES = 100_000
"""Values that aliases may add to a document once expanded (sharing a solver section among a
few places adds a handful)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last
    silently, so a duplicated section would drop the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of the file ``path``; a missing file is ``FileNotFoundError``, a folder or
    bytes that are not UTF-8 a :class:`ConfigurationError` naming the byte and line."""
    p = Path(path)
    if p.is_dir():
        raise ConfigurationError(f"{what} {p} is a folder; give the file itself")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigurationError(f"{p}: not UTF-8 text (byte {exc.start}, line {line}); save the {what} as "
                                 "UTF-8 YAML or JSON") from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _measure(root: yaml.Node, where: str) -> tuple[int, int, int]:
    """``(depth, expanded values, distinct nodes)`` of a composed document, each distinct node
    visited once (iterative post-order; an alias that refers to its own ancestor is refused)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = (1 + max((depth[id(c)] for c in kids), default=0)) if not isinstance(
                node, yaml.ScalarNode) else 0
            continue
        if key in size:
            continue
        if key in depth:  # entered and not finished: we are inside it
            line = node.start_mark.line + 1 if node.start_mark else "?"
            raise ConfigurationError(f"{where}: the value at line {line} contains itself through a YAML "
                                     "alias (a recursive anchor); data files are trees")
        depth[key] = -1  # entered
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))
    return depth[id(root)], size[id(root)], len(size)


def load_yaml(text: str, where: str) -> Any:
    """Parse ``text`` (YAML or JSON) as plain data with :class:`UniqueKeyLoader`, refusing
    documents nested deeper than :data:`MAX_DEPTH` or whose aliases expand to more than
    :data:`MAX_ALIAS_VALUES` extra values, before the data is constructed. Errors are a
    :class:`ConfigurationError` starting with ``where`` (the file)."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        depth, expanded, distinct = _measure(node, where)
        if depth > MAX_DEPTH:
            raise ConfigurationError(f"{where}: nested {depth} levels deep (at most {MAX_DEPTH}); a data file "
                                     "has a few levels of sections")
        if expanded - distinct > MAX_ALIAS_VALUES:
            raise ConfigurationError(
                f"{where}: YAML aliases (*name) expand its {distinct} values to {expanded} (at most "
                f"{MAX_ALIAS_VALUES} more than written); write the repeated parts out, or use fewer aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigurationError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigurationError(f"{where}: nested too deeply to read (thousands of levels); a data file "
                                 "has a few levels of sections") from None
    finally:
        loader.dispose()


def read_config(path: str | Path) -> dict:
    """A run config file as plain data: a mapping of sections (an empty file is ``{}``), read
    with :func:`load_yaml`. Light: the command line bounds a file with it before the configs
    (and torch) are imported; :func:`dynode.config.load_config` validates the result."""
    p = Path(path)
    if p.is_dir():
        raise ConfigurationError(f"config {p} is a folder; give the YAML file (e.g. {p / 'config.yaml'})")
    data = load_yaml(read_text(p, "config"), str(p))
    if not isinstance(data, dict | None):
        raise ConfigurationError(f"{p}: the top level must be a mapping of sections (model, data, ...)")
    return data or {}
