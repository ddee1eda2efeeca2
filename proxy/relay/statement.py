"""What the relay remembers about a statement between request and completion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from proxy.policy.decision import Decision
from proxy.sql.facts import QueryFacts, StatementFacts


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


@dataclass(frozen=True, slots=True)
class Completion:
    """One statement that finished (or was refused): everything its audit record needs."""

    statement: Statement | None
    via: Via
    started_wall: float
    started_ns: int
    ended_ns: int
    tag: str = ""
    error: dict[str, str] | None = None
    rows: int | None = None  # rows affected or returned; None when unknown
    index: int = -1  # which statement of a multi-statement Query (-1: the only one)
    portal: str = ""
    params: list[Any] | None = None
    bind_values: tuple[bytes | None, ...] = ()  # raw, when read: for redacting echoed errors
    refusal: Decision | None = None  # refused by pgwarden: nothing of it ran
    suspended: bool = False  # a portal the client stopped fetching from
    # The transaction status after the statement, as PostgreSQL's rules give it (the next
    # ReadyForQuery confirms it; an event built after that one uses the server's word).
    tx_after: int = ord("I")
    scope: Scope = Scope.STATEMENT
    dispatch: int = 0  # seq of its dispatch record (audit.write_ahead), 0: none
    guard: GuardResult | None = None  # a max_rows guard ran it

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
