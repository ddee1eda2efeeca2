"""YAML loading that remembers where every key and item was written.

Config, policy, alert-rule and case files all report problems as ``file:line:col``. PyYAML's
node marks carry that position; this loader keeps them on the containers it builds, so the
validators can point at the exact key or list item that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxy.errors import SourceError, SourceProblem

Position = tuple[int, int]  # (line, col), both 1-based


class MarkedDict(dict[Any, Any]):
    """A mapping from YAML that knows the position of itself and of each key."""

    file: str = ""
    pos: Position = (0, 0)
    key_pos: dict[Any, Position]

    def where(self, key: Any | None = None) -> Position:
        if key is not None and key in getattr(self, "key_pos", {}):
            return self.key_pos[key]
        return self.pos


class MarkedList(list[Any]):
    """A sequence from YAML that knows the position of itself and of each item."""

    file: str = ""
    pos: Position = (0, 0)
    item_pos: list[Position]

    def where(self, index: int | None = None) -> Position:
        if index is not None and 0 <= index < len(getattr(self, "item_pos", [])):
            return self.item_pos[index]
        return self.pos


def _pos(node: yaml.Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _MarkingLoader(yaml.SafeLoader):
    source_name = ""

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        data = MarkedDict()
        data.file = self.source_name
        data.pos = _pos(node)
        data.key_pos = {}
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                ) from None
            if key in data:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            data[key] = self.construct_object(value_node, deep=True)
            data.key_pos[key] = _pos(key_node)

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Any:
        data = MarkedList()
        data.file = self.source_name
        data.pos = _pos(node)
        data.item_pos = [_pos(child) for child in node.value]
        yield data
        data.extend(self.construct_object(child, deep=True) for child in node.value)


_MarkingLoader.add_constructor("tag:yaml.org,2002:map", _MarkingLoader.construct_yaml_map)
_MarkingLoader.add_constructor("tag:yaml.org,2002:seq", _MarkingLoader.construct_yaml_seq)


def load_text(text: str, source_name: str) -> Any:
    """Parse YAML text; syntax errors become a :class:`SourceError` naming file:line:col."""
    loader = _MarkingLoader(text)
    loader.source_name = source_name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise SourceError([SourceProblem(source_name, line, col, message)]) from None
    except yaml.YAMLError as exc:
        raise SourceError([SourceProblem(source_name, 0, 0, str(exc))]) from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file; unreadable files become a :class:`SourceError` too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([SourceProblem(name, 0, 0, f"cannot read file: {exc}")]) from None
    return load_text(text, name)


def where(container: Any, key: Any | None = None) -> Position:
    """Position of ``key`` in ``container`` (or of the container) when it came from YAML."""
    if isinstance(container, MarkedDict | MarkedList):
        return container.where(key)
    return (0, 0)


def problem(container: Any, key: Any | None, message: str, *, path: str = "") -> SourceProblem:
    """A :class:`SourceProblem` located at ``container[key]``."""
    line, col = where(container, key)
    return SourceProblem(getattr(container, "file", ""), line, col, message, path)
