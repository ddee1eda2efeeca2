"""What the relay remembers about a statement between request and completion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from proxy.policy.decision import Decision
from proxy.sql.facts import QueryFacts, StatementFacts
from proxy.wire import constants as c


class Via(Enum):
    """The protocol a statement ran through (the audit record's ``protocol`` field)."""

    SIMPLE = "simple"
    EXTENDED = "extended"
    FUNCTION_CALL = "function_call"


class Scope(Enum):
    """What a recorded duration covers (the audit record's ``duration_scope``)."""

    STATEMENT = "statement"  # this statement alone, as the wire shows it
    # From the start of a multi-statement Query to this statement's completion: PostgreSQL
    # sends nothing before the end of such a message, so a statement's own time is not seen.
    MESSAGE = "message"
    # Queued behind other pipelined work: from the previous completion pgwarden saw (the
    # earliest it can have started) to its own; the server may have buffered both.
    PIPELINE = "pipeline"


class GuardOutcome(Enum):
    """What a ``max_rows`` guard did with a statement (the audit record's ``row_guard``)."""

    WITHIN = "within"  # released: the client got the result
    EXCEEDED = "exceeded"  # more rows than allowed: rolled back, refused
    UNCOUNTED = "uncounted"  # its reply did not count rows: rolled back, refused
    FAILED = "failed"  # it failed by itself: the client got the server's error
    MONITOR = "monitor"  # monitor mode: not guarded, the count is only recorded
    SKIPPED = "skipped"  # not run (the transaction had failed, or the server discarded it)


@dataclass(frozen=True, slots=True)
class GuardResult:
    limit: int
    rule_id: str
    outcome: GuardOutcome
    rows: int | None = None  # rows the command tag reported (attempted)

    def audit(self) -> dict[str, Any]:
        return {
            "max_rows": self.limit,
            "rule": self.rule_id,
            "outcome": self.outcome.value,
            "rows": self.rows,
        }


class Statement:
    """A statement the session follows: a Query's text, a prepared statement, a FunctionCall.

    Mutable in one way only: a prepared statement's decision is refreshed when the policy
    changes between Parse and Bind.
    """

    __slots__ = (
        "decision",
        "facts",
        "generation",
        "name",
        "param_types",
        "per_statement",
        "review_id",
        "shown",
        "stmt",
        "text",
    )

    def __init__(
        self,
        text: str,
        facts: QueryFacts | None,
        decision: Decision | None,
        name: str = "",
        param_types: tuple[int, ...] = (),
        shown: str | None = None,
    ) -> None:
        self.text = text
        self.facts = facts
        self.decision = decision
        self.name = name
        self.param_types = param_types  # as Parse declared them (0: unspecified)
        self.shown = shown  # the text audit records show, when not the statement's own
        # For a multi-statement Query: each statement's own decision (``decision`` is the
        # message's, which is what was enforced).
        self.per_statement: tuple[Decision, ...] = ()
        self.review_id = ""  # the approval request that decided it (review rules)
        self.generation = -1  # policy generation the decision was made under
        self.stmt: StatementFacts | None = (
            facts.statements[0] if facts is not None and len(facts.statements) == 1 else None
        )


class Completion:
    """One statement that finished (or was refused): everything its audit record needs.

    A value: mypy enforces that no field is assigned after ``__init__`` (``Final``), and the
    ``with_*`` methods return changed copies. Not a frozen dataclass because one is built per
    statement: a frozen dataclass's generated ``__init__`` stays interpreted Python setting
    each field through ``object.__setattr__`` (~26,000 instructions per statement, measured
    with bench/count_hot.py under callgrind), where this one compiles to plain stores.
    """

    __slots__ = (
        "bind_values",
        "dispatch",
        "ended_ns",
        "error",
        "guard",
        "index",
        "params",
        "portal",
        "refusal",
        "rows",
        "scope",
        "started_ns",
        "started_wall",
        "statement",
        "suspended",
        "tag",
        "tx_after",
        "via",
    )

    def __init__(
        self,
        statement: Statement | None,
        via: Via,
        started_wall: float,
        started_ns: int,
        ended_ns: int,
        tag: str = "",
        error: dict[str, str] | None = None,
        rows: int | None = None,
        index: int = -1,
        portal: str = "",
        params: list[Any] | None = None,
        bind_values: tuple[bytes | None, ...] = (),
        refusal: Decision | None = None,
        suspended: bool = False,
        tx_after: int = c.TX_IDLE,
        scope: Scope = Scope.STATEMENT,
        dispatch: int = 0,
        guard: GuardResult | None = None,
    ) -> None:
        self.statement: Final = statement
        self.via: Final = via
        self.started_wall: Final = started_wall
        self.started_ns: Final = started_ns
        self.ended_ns: Final = ended_ns
        self.tag: Final = tag
        self.error: Final = error
        self.rows: Final = rows  # rows affected or returned; None when unknown
        self.index: Final = index  # which statement of a multi-statement Query (-1: the only one)
        self.portal: Final = portal
        self.params: Final = params
        # Raw, when read: for redacting echoed errors.
        self.bind_values: Final = bind_values
        self.refusal: Final = refusal  # refused by pgwarden: nothing of it ran
        self.suspended: Final = suspended  # a portal the client stopped fetching from
        # The transaction status after the statement, as PostgreSQL's rules give it (the next
        # ReadyForQuery confirms it; an event built after that one uses the server's word).
        self.tx_after: Final = tx_after
        self.scope: Final = scope
        self.dispatch: Final = dispatch  # seq of its dispatch record (audit.write_ahead), 0: none
        self.guard: Final = guard  # a max_rows guard ran it

    def _copy(
        self,
        tag: str,
        error: dict[str, str] | None,
        rows: int | None,
        refusal: Decision | None,
        tx_after: int,
        scope: Scope,
        guard: GuardResult | None,
    ) -> Completion:
        return Completion(
            self.statement,
            self.via,
            self.started_wall,
            self.started_ns,
            self.ended_ns,
            tag,
            error,
            rows,
            self.index,
            self.portal,
            self.params,
            self.bind_values,
            refusal,
            self.suspended,
            tx_after,
            scope,
            self.dispatch,
            guard,
        )

    def with_tx_after(self, tx_after: int) -> Completion:
        return self._copy(
            self.tag, self.error, self.rows, self.refusal, tx_after, self.scope, self.guard
        )

    def with_scope(self, scope: Scope) -> Completion:
        return self._copy(
            self.tag, self.error, self.rows, self.refusal, self.tx_after, scope, self.guard
        )

    def with_guard(self, guard: GuardResult, tx_after: int | None = None) -> Completion:
        after = self.tx_after if tx_after is None else tx_after
        return self._copy(self.tag, self.error, self.rows, self.refusal, after, self.scope, guard)

    def refused_by_guard(
        self, error: dict[str, str], refusal: Decision, guard: GuardResult, tx_after: int
    ) -> Completion:
        """This statement ran, and a ``max_rows`` guard rolled it back: a refusal now."""
        return self._copy("", error, None, refusal, tx_after, self.scope, guard)

    def __repr__(self) -> str:
        return (
            f"Completion({self.via.value}, {self.text!r}, tag={self.tag!r}, "
            f"error={self.error!r}, rows={self.rows!r}, index={self.index})"
        )

    @property
    def stmt(self) -> StatementFacts | None:
        statement = self.statement
        if statement is None:
            return None
        if self.index >= 0:
            facts = statement.facts
            if facts is not None and self.index < len(facts.statements):
                return facts.statements[self.index]
            return None
        return statement.stmt

    @property
    def text(self) -> str:
        if self.index < 0 and self.statement is not None and self.statement.shown is not None:
            return self.statement.shown
        stmt = self.stmt
        if stmt is not None:
            return stmt.text
        return self.statement.text if self.statement is not None else ""
