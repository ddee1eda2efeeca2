"""Carrying out a decision: forward, answer locally, or poison the server and substitute.

Blocking must leave client and server in the same transaction state (DESIGN.md rule 3). When
the session is idle with nothing in flight, PostgreSQL's own answer to a failing statement is
an ErrorResponse and ReadyForQuery, which pgwarden can send itself. Otherwise the server is
sent a statement that fails to parse in place of the blocked one, so it fails in the same
place; its error is swallowed and replaced by the policy's.
"""

from __future__ import annotations

from enum import Enum

from proxy.policy.decision import Decision
from proxy.wire import constants as c
from proxy.wire import messages as m

_POISON_SQL = "PGWARDEN BLOCKED STATEMENT /* {} */"
# A Bind naming a statement that cannot exist: fails on the server like the blocked one would.
BLOCKED_STATEMENT = b"__pgwarden_blocked__"


class Action(Enum):
    FORWARD = "forward"
    ANSWER_LOCALLY = "answer_locally"
    POISON = "poison"


def action_for(refusal: Decision | None, *, in_flight: bool, tx_status: int) -> Action:
    if refusal is None:
        return Action.FORWARD
    if not in_flight and tx_status != c.TX_IN_BLOCK:
        return Action.ANSWER_LOCALLY
    return Action.POISON


def refusal(decision: Decision, audit_refusal: Decision | None) -> Decision | None:
    """The decision to enforce as a refusal, or None to let the statement run.
    ``audit_refusal`` is set when the trail cannot take records under ``audit.fail_closed``."""
    if decision.action == "block":
        return decision
    return audit_refusal


_RANK: dict[str, int] = {"block": 3, "review": 2, "flag": 1, "allow": 0}


def strictest(decisions: list[Decision]) -> Decision:
    """Of the decisions for every way the server may read a message, the one to enforce
    (the first of the strictest)."""
    found = decisions[0]
    if len(decisions) == 1:
        return found  # the common case: one way to read it
    rank = _RANK.get(found.action, 3)
    for decision in decisions[1:]:
        other = _RANK.get(decision.action, 3)
        if other > rank:
            found, rank = decision, other
    return found


def _comment(decision: Decision) -> str:
    rule = decision.rules[0].id if decision.rules else "policy"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rule)[:60]


def poison_query(decision: Decision) -> bytes:
    return m.query(_POISON_SQL.format(_comment(decision)))


def poison_parse(name: bytes, decision: Decision) -> bytes:
    return m.parse(name, _POISON_SQL.format(_comment(decision)))


def poison_bind() -> bytes:
    return m.bind_missing_statement(BLOCKED_STATEMENT)


def policy_error(decision: Decision) -> bytes:
    ids = ", ".join(r.id for r in decision.rules if r.action == decision.action) or "policy"
    return m.error_response(
        decision.sqlstate or c.SQLSTATE_INSUFFICIENT_PRIVILEGE,
        decision.message or "statement blocked by pgwarden policy",
        detail=f"pgwarden rule: {ids}",
    )


def flag_notice(decision: Decision) -> bytes | None:
    """The NoticeResponse a flag rule with ``notify`` asks for, else None."""
    if decision.action != "flag" or not decision.notify:
        return None
    ids = ", ".join(r.id for r in decision.rules)
    return m.notice_response(
        decision.message or "statement flagged by pgwarden policy",
        detail=f"pgwarden rule: {ids}",
    )


def refused_error(decision: Decision) -> dict[str, str]:
    """The error fields the audit record of a refused statement carries."""
    return {
        "C": decision.sqlstate or c.SQLSTATE_INSUFFICIENT_PRIVILEGE,
        "M": decision.message or "statement blocked by pgwarden policy",
    }
