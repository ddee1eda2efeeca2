"""One namespace for prepared statements, as PostgreSQL has (DESIGN.md rule 8).

SQL ``PREPARE``/``DEALLOCATE``/``DISCARD ALL`` and protocol Parse/Close name statements in
the same table on the server. A change takes effect only if the statement that makes it
succeeds, and a pipelined Bind may arrive before that is known: until then the name has
several *candidates* (the old body, the new one, or none), each is judged, and the strictest
decision wins. A change settles when its request completes (kept) or fails (dropped).
"""

from __future__ import annotations

from typing import Final

from proxy.relay.statement import Statement

ALL = "\x00all"  # DEALLOCATE ALL / DISCARD ALL


class Change:
    """One pending change: ``statement`` None removes the name (or every name for ALL).

    A value (``Final`` fields), made per Parse: a plain class, because a frozen dataclass's
    ``__init__`` stays interpreted in the compiled build."""

    __slots__ = ("name", "statement")

    def __init__(self, name: str, statement: Statement | None) -> None:
        self.name: Final = name
        self.statement: Final = statement


class PreparedStatements:
    __slots__ = ("_pending", "_settled")

    def __init__(self) -> None:
        self._settled: dict[str, Statement] = {}
        self._pending: list[Change] = []  # in request order, not yet settled

    def change(self, name: str, statement: Statement | None) -> Change:
        """Record a change sent to the server; settle it with :meth:`settle`."""
        item = Change(name, statement)
        if not self._pending and _certain(item):
            # Nothing else in flight and it cannot fail in a way that matters: apply now.
            self._apply(item)
            return item
        self._pending.append(item)
        return item

    def settle(self, item: Change, succeeded: bool) -> None:
        pending = self._pending
        for index, other in enumerate(pending):
            if other is item:
                del pending[index]
                if succeeded:
                    self._apply(item)
                return
        # Not pending: it was applied at once.

    def settle_all_failed(self) -> None:
        """The server discarded every request in flight (error until Sync, lost connection)."""
        self._pending.clear()

    def _apply(self, item: Change) -> None:
        if item.name == ALL:
            self._settled.clear()
        elif item.statement is None:
            self._settled.pop(item.name, None)
        else:
            self._settled[item.name] = item.statement

    def candidates(self, name: str) -> tuple[Statement, ...]:
        """What ``name`` may run: the most recent change first, then older possibilities."""
        found: list[Statement] = []
        for item in reversed(self._pending):
            if item.name == name and item.statement is not None:
                found.append(item.statement)
        settled = self._settled.get(name)
        if settled is not None:
            found.append(settled)
        return tuple(found)

    def latest(self, name: str) -> Statement | None:
        candidates = self.candidates(name)
        return candidates[0] if candidates else None


def _certain(item: Change) -> bool:
    # Protocol Parse of the unnamed statement always replaces it when it succeeds; a failed
    # one leaves no unnamed statement, so judging the new body alone is the strict choice.
    return item.name == "" and item.statement is not None
