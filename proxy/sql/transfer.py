"""QueryFacts as plain JSON values and back, for the analysis worker's answers.

The worker (:mod:`proxy.sql.worker`) parses attacker-supplied text with a C library, so its
answer is treated as untrusted data: no pickle (which would let a subverted worker run code
in the proxy), only JSON scalars, lists and objects, rebuilt into the facts classes
named in :data:`_CLASSES` and nothing else. A malformed answer raises
:class:`~proxy.errors.AnalysisWorkerError`.

Statement texts are sent as offsets into the text the proxy already holds (``{"at": i,
"n": len}``), so a 6 MB statement is not copied back through the pipe; a text that is not a
slice of it (none today) travels literally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from proxy.errors import AnalysisWorkerError
from proxy.sql.facts import QueryFacts, RecordedText, Relation, StatementFacts

_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (QueryFacts, StatementFacts, Relation, RecordedText)
}
_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in _CLASSES.items()
}
_TEXT_FIELD = "text"


def encode(facts: QueryFacts, text: str) -> Any:
    """``facts`` as JSON values; ``text`` is the analysed text, which the decoder has too."""
    return _Encoder(text).value(facts, "")


class _Encoder:
    __slots__ = ("hint", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.hint = 0  # statements come in text order: search from the last one's start

    def value(self, value: Any, field: str) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.string(value) if field == _TEXT_FIELD else value
        if isinstance(value, frozenset):
            return {"set": sorted(self.value(v, "") for v in value)}
        if isinstance(value, tuple):
            return {"tuple": [self.value(v, "") for v in value]}
        name = type(value).__name__
        if name in _CLASSES and type(value) is _CLASSES[name]:
            return {
                "class": name,
                "fields": {f: self.value(getattr(value, f), f) for f in _FIELDS[name]},
            }
        raise TypeError(f"cannot encode {type(value).__name__} in facts")

    def string(self, value: str) -> Any:
        at = self.text.find(value, self.hint)
        if at < 0:
            return value
        self.hint = at
        return {"at": at, "n": len(value)}


def decode(data: Any, text: str) -> QueryFacts:
    """Rebuild what :func:`encode` made from the same ``text``."""
    facts = _Decoder(text).value(data)
    if type(facts) is not QueryFacts:
        raise AnalysisWorkerError("the answer is not a QueryFacts")
    return facts


def decode_steps(data: Any, text: str, every: int = 256) -> Iterator[QueryFacts | None]:
    """:func:`decode` in steps: yields None after every ``every`` statements, then the facts,
    so a caller on an event loop can let others run between steps."""
    decoder = _Decoder(text)
    if not isinstance(data, dict) or data.get("class") != "QueryFacts":
        raise AnalysisWorkerError("the answer is not a QueryFacts")
    fields = data.get("fields")
    if not isinstance(fields, dict) or not isinstance(fields.get("statements"), dict):
        raise AnalysisWorkerError("QueryFacts without statements")
    items = fields["statements"].get("tuple")
    if not isinstance(items, list):
        raise AnalysisWorkerError("statements are not a tuple")
    statements: list[StatementFacts] = []
    for i, item in enumerate(items, 1):
        stmt = decoder.value(item)
        if type(stmt) is not StatementFacts:
            raise AnalysisWorkerError("a statement is not a StatementFacts")
        statements.append(stmt)
        if i % every == 0:
            yield None
    rest = {k: v for k, v in fields.items() if k != "statements"}
    yield decoder.build("QueryFacts", rest, statements=tuple(statements))


class _Decoder:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def value(self, data: Any) -> Any:
        if data is None or isinstance(data, bool | int | float | str):
            return data
        if isinstance(data, dict):
            if "at" in data:
                return self.slice(data)
            if "set" in data:
                return frozenset(self.value(v) for v in self.items(data["set"]))
            if "tuple" in data:
                return tuple(self.value(v) for v in self.items(data["tuple"]))
            if "class" in data:
                fields = data.get("fields")
                if not isinstance(fields, dict):
                    raise AnalysisWorkerError("an object without fields")
                return self.build(data["class"], fields)
        raise AnalysisWorkerError(f"unexpected value in the answer: {type(data).__name__}")

    @staticmethod
    def items(data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise AnalysisWorkerError("a collection that is not a list")
        return data

    def slice(self, data: dict[str, Any]) -> str:
        at, n = data.get("at"), data.get("n")
        if not (isinstance(at, int) and isinstance(n, int)) or at < 0 or n < 0:
            raise AnalysisWorkerError("a text offset that is not two non-negative integers")
        if at + n > len(self.text):
            raise AnalysisWorkerError("a text offset beyond the analysed text")
        return self.text[at : at + n]

    def build(self, name: Any, fields: dict[str, Any], **ready: Any) -> Any:
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise AnalysisWorkerError(f"unknown class in the answer: {name!r}")
        allowed = _FIELDS[name]
        if set(fields) | set(ready) != set(allowed):
            raise AnalysisWorkerError(f"{name} with fields {sorted(fields)}")
        values = {k: self.value(v) for k, v in fields.items()}
        values.update(ready)
        try:
            return cls(**values)
        except TypeError as exc:
            raise AnalysisWorkerError(f"{name}: {exc}") from None
