"""The audit record's text of a long statement, made where the statement is analysed.

What a record keeps of a statement is its text redacted (``audit.statement_text: full``) or
normalized, then capped at ``audit.statement_max`` with the whole recorded text's length and
SHA-256 (proxy.audit.textcap). Redacting and normalizing run PostgreSQL's scanner over the
text and make a token object per word: for a 6 MB ``INSERT … VALUES`` that is ~2 s of CPU as
soon as one word looks like a secret (``key``, ``token``), ~0.1 s without, and hashing it for
the cap a few ms more. Done when the statement completes, on the event loop, it stalled every
other session that long. So a statement long enough to be analysed in a worker process
(proxy.sql.pool) gets its record's text made in that worker too, right after its facts
(:func:`attach`), and the loop only copies it into the event (:func:`fill`). The worker also
lists the long text's secret values, with which an error the statement causes is redacted
(:func:`secrets_of`; finding them is the same scan).

The text made in the worker is the one the loop would make, with one difference on the safe
side: an ``EXECUTE name(…)`` is redacted as if the prepared body took secrets (the worker
cannot see the session's prepared statements), so its arguments are always masked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from proxy.audit.textcap import cap_text, mark_capped
from proxy.sql import redact
from proxy.sql.facts import QueryFacts, RecordedText, StatementFacts

# Shorter statement texts are redacted on the loop when their record is made (a few ms at
# most): the pieces of a long multi-statement Query, for one.
MIN_CHARS = 8192
MODES = frozenset({"full", "normalized", "none"})


def recorded(text: str, stmt: StatementFacts | None, mode: str, limit: int) -> RecordedText:
    """``text`` as a record keeps it under ``audit.statement_text`` ``mode`` and
    ``audit.statement_max`` ``limit``, for a statement whose prepared body (if it is an
    EXECUTE) is unknown."""
    if mode == "full":
        shown: str | None = redact.redact_statement(text, stmt, unresolved=True)
    elif mode == "normalized":
        shown = redact.normalize(text)
    else:
        shown = None
    capped = cap_text(shown, limit) if shown is not None else None
    if capped is None:
        return RecordedText(shown, mode, limit)
    kept, length, sha256 = capped
    return RecordedText(kept, mode, limit, length, sha256)


def attach(facts: QueryFacts, mode: str, limit: int) -> QueryFacts:
    """``facts`` with the record's text of each long statement, of the whole text when it is
    long and not one statement's (a parse error; a refused multi-statement message is recorded
    whole), and the secret values of a long text (for redacting the errors it causes, whatever
    ``mode``) attached; unchanged when nothing is long."""
    long_text = len(facts.text) >= MIN_CHARS
    secrets = tuple(redact.secret_values(facts.text)) if long_text else None
    statements = facts.statements
    record = None
    if mode in MODES and mode != "none":  # (a record without text needs nothing made)
        statements = tuple(
            dataclasses.replace(s, record=recorded(s.text, s, mode, limit))
            if len(s.text) >= MIN_CHARS
            else s
            for s in statements
        )
        if long_text and len(statements) != 1:
            record = recorded(facts.text, None, mode, limit)
    # (``record`` is not compared: the statements are equal to the old ones either way)
    if (
        secrets is None
        and record is None
        and all(a is b for a, b in zip(statements, facts.statements, strict=True))
    ):
        return facts
    return dataclasses.replace(facts, statements=statements, record=record, secrets=secrets)


def secrets_of(statement: str, facts: QueryFacts | None) -> tuple[str, ...] | None:
    """The secret values of ``statement`` found off the loop, when ``facts`` (its analysis)
    has them for exactly that text; None: find them now."""
    if facts is None or facts.secrets is None or facts.text is not statement:
        return None
    found = facts.secrets
    if not isinstance(found, tuple) or not all(isinstance(v, str) for v in found):
        return None  # (untrusted worker data of the wrong shape)
    return found


def made(
    text: str,
    stmt: StatementFacts | None,
    facts: QueryFacts | None,
    mode: str,
    limit: int,
) -> RecordedText | None:
    """The record's text made off the loop for exactly ``text`` (the same object as the
    statement's or the message's text) under the current settings, if there is one."""
    found = None
    if stmt is not None and stmt.record is not None and stmt.text is text:
        found = stmt.record
    elif facts is not None and facts.record is not None and facts.text is text:
        found = facts.record  # the message's own text (with its first statement's facts)
    if found is None or found.mode != mode or found.limit != limit or not _well_formed(found):
        return None
    return found


def _well_formed(record: RecordedText) -> bool:
    """The worker's answer is untrusted data (proxy.sql.transfer): only values of the right
    types reach a record."""
    capped = record.length is not None
    return (
        (record.text is None or isinstance(record.text, str))
        and (record.length is None or type(record.length) is int)
        and (record.sha256 is None or isinstance(record.sha256, str))
        and capped == (record.sha256 is not None)
        and (not capped or record.text is not None)
    )


def fill(event: dict[str, Any], record: RecordedText) -> None:
    """Put ``record`` into ``event`` as the trail would have capped it."""
    if record.length is not None and record.sha256 is not None and record.text is not None:
        mark_capped(event, record.text, record.length, record.sha256)
    else:
        event["statement"] = record.text
