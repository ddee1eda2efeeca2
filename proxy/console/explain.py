"""EXPLAIN of a held statement, run only when an approver asks (never automatically).

It runs on ``approvals.explain_dsn`` (a role of your choice, ideally one with the requester's
read privileges), as ``EXPLAIN (FORMAT TEXT) <statement>`` in a READ ONLY transaction that is
rolled back, with a 5 s statement timeout, over the extended protocol (one statement only).
Only a single SELECT/INSERT/UPDATE/DELETE/MERGE/VALUES that PostgreSQL's grammar accepts is
explained; nothing executes: EXPLAIN without ANALYZE only plans.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from proxy.approvals.model import Request
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings

EXPLAINABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES"})
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Plan:
    lines: tuple[str, ...] = ()
    error: str = ""


def why_not(request: Request, dsn: str) -> str:
    """Why this request cannot be explained ("" when it can)."""
    if not dsn:
        return "EXPLAIN is off: set approvals.explain_dsn to the connection it should run on"
    if request.params:
        return "statements with bind parameters cannot be explained yet"
    if not request.text:
        return "the statement text is not available"
    facts = analyze(request.text, ParserSettings())
    if not facts.parsable:
        return "PostgreSQL's grammar does not accept the text"
    if len(facts.statements) != 1:
        return "only a single statement can be explained"
    command = facts.statements[0].command
    if command not in EXPLAINABLE:
        return f"EXPLAIN does not apply to {command}"
    return ""


async def explain(request: Request, dsn: str) -> Plan:
    reason = why_not(request, dsn)
    if reason:
        return Plan(error=reason)
    import asyncpg

    try:
        async with asyncio.timeout(TIMEOUT * 2):
            conn = await asyncpg.connect(dsn, timeout=TIMEOUT)
            try:
                async with conn.transaction(readonly=True):
                    await conn.execute(f"SET LOCAL statement_timeout = '{int(TIMEOUT)}s'")
                    rows = await conn.fetch("EXPLAIN (FORMAT TEXT) " + request.text)
                    raise _Rollback(tuple(str(r[0]) for r in rows))
            except _Rollback as done:
                return Plan(lines=done.lines)
            finally:
                await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return Plan(error=f"EXPLAIN failed: {exc}")


class _Rollback(Exception):
    """Leaves the transaction by exception, so asyncpg rolls it back."""

    def __init__(self, lines: tuple[str, ...]) -> None:
        super().__init__("rollback")
        self.lines = lines
