"""Did it commit? The outcome of the transactions a session runs (issue 9 §2).

The trail is append-only, so a statement's record cannot say whether its effects survived:
that is known later. :class:`TransactionTracker` follows the statements of the current
transaction and, when the outcome is known, yields a ``transaction`` event that names them.

PostgreSQL's rules, as the wire shows them:

* a successful COMMIT ends an explicit transaction as committed; ROLLBACK (and COMMIT of a
  failed transaction, whose tag is ROLLBACK) as rolled back; PREPARE TRANSACTION leaves the
  outcome to a later COMMIT/ROLLBACK PREPARED (``unknown``);
* statements outside a transaction block run in an implicit transaction that ends at the next
  ReadyForQuery: committed, unless one of them failed — then all of them were rolled back
  (``UPDATE …; SELECT 1/0`` in one Query changes nothing);
* ROLLBACK TO SAVEPOINT undoes the statements since the savepoint;
* a connection that ends inside a transaction: the server rolls it back when the client
  left; when the server connection was lost the outcome is ``unknown``.

To keep the trail lean, an autocommit statement that succeeded gets no event of its own: its
record plus the absence of a rolled-back event is the proof. Every explicit transaction and
every transaction that did not commit gets one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from proxy.audit.record import Event
from proxy.relay.statement import Completion

_CONTROL = frozenset(
    {
        "BEGIN",
        "START TRANSACTION",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "COMMIT",
        "PREPARE TRANSACTION",
    }
)


class Outcome(Enum):
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    """A transaction whose outcome is now known: the events of its statements."""

    outcome: Outcome
    reason: str
    statements: tuple[Event, ...]
    explicit: bool
    savepoint: str | None = None  # set for ROLLBACK TO SAVEPOINT


class _Open:
    """The transaction in progress (a new one after every autocommit statement: a plain
    class, a dataclass's generated ``__init__`` stays interpreted in the compiled build)."""

    __slots__ = ("explicit", "failed", "savepoints", "statements")

    def __init__(self) -> None:
        self.statements: list[Event] = []
        self.explicit = False
        self.failed = False
        self.savepoints: list[tuple[str, int]] = []


class TransactionTracker:
    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open = _Open()

    def statement(self, done: Completion, event: Event) -> list[TransactionEnd]:
        """A statement finished (or was refused); returns transactions it ended."""
        current = self._open
        current.statements.append(event)
        if done.error is not None or done.refusal is not None:
            current.failed = True
            return []
        tag = done.tag
        if tag not in _CONTROL:
            return []  # the common case: nothing about the transaction changes
        if tag == "BEGIN" or tag == "START TRANSACTION":
            # Statements before BEGIN in the same message ran in their own implicit
            # transaction, which BEGIN does not end; keep it simple: BEGIN opens the block.
            current.explicit = True
            return []
        words = done.text.upper().replace(";", " ").split()
        if tag == "SAVEPOINT" and len(words) >= 2:
            current.savepoints.append((words[-1].strip('"'), len(current.statements)))
            return []
        if tag == "RELEASE" and words:
            name = words[-1].strip('"')
            current.savepoints = [sp for sp in current.savepoints if sp[0] != name]
            return []
        if tag == "ROLLBACK" and "TO" in words[:3]:
            return self._rollback_to(words[-1].strip('"'))
        if tag == "COMMIT":
            return [self._close(Outcome.COMMITTED, "COMMIT")]
        if tag == "ROLLBACK":
            reason = (
                "COMMIT of a failed transaction"
                if words[:1] in (["COMMIT"], ["END"])
                else ("ROLLBACK")
            )
            return [self._close(Outcome.ROLLED_BACK, reason)]
        if tag == "PREPARE TRANSACTION":
            return [self._close(Outcome.UNKNOWN, "PREPARE TRANSACTION: decided later")]
        return []

    def _rollback_to(self, name: str) -> list[TransactionEnd]:
        current = self._open
        for index in range(len(current.savepoints) - 1, -1, -1):
            savepoint, position = current.savepoints[index]
            if savepoint == name:
                undone = current.statements[position:-1]  # not the ROLLBACK TO itself
                del current.savepoints[index + 1 :]
                current.failed = False  # ROLLBACK TO recovers a failed transaction
                if not undone:
                    return []
                return [
                    TransactionEnd(
                        Outcome.ROLLED_BACK,
                        f"ROLLBACK TO SAVEPOINT {name}",
                        tuple(undone),
                        True,
                        savepoint=name,
                    )
                ]
        return []

    def ready(self, tx_status: int) -> list[TransactionEnd]:
        """ReadyForQuery: outside a transaction block, the implicit transaction ended."""
        current = self._open
        if tx_status != ord("I") or not current.statements:
            return []
        if current.failed:
            return [self._close(Outcome.ROLLED_BACK, "an error ended the transaction")]
        if current.explicit:
            return [self._close(Outcome.COMMITTED, "COMMIT")]
        self._open = _Open()  # autocommit, succeeded: no event needed
        return []

    def connection_ended(self, client_left: bool) -> list[TransactionEnd]:
        if not self._open.statements:
            return []
        if client_left:
            return [self._close(Outcome.ROLLED_BACK, "the connection closed in a transaction")]
        return [self._close(Outcome.UNKNOWN, "the server connection was lost")]

    def _close(self, outcome: Outcome, reason: str) -> TransactionEnd:
        current = self._open
        self._open = _Open()
        return TransactionEnd(outcome, reason, tuple(current.statements), current.explicit)
