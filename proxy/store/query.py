"""Read audit events back from the store, with the ``logs`` filters pushed down into SQL.

The :class:`~proxy.audit.filters.EventFilter` is translated into WHERE clauses on the indexed
columns (parameters bound, never spliced into the text), the rows stream through a
server-side cursor in (ts, proxy_id, trail_id, seq) order, and every event is checked once more with
``EventFilter.matches``: the SQL only narrows, so the store answers exactly what the same
filter over the files answers, even for a criterion SQL cannot express (e.g. a glob with
``[...]``), which is then simply not pushed down.

For the commands: ``events = iter_store_events(args.store, flt)`` (a plain iterator of dicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson

from proxy.audit.filters import HIDDEN_TYPES, EventFilter
from proxy.errors import StoreError
from proxy.store.schema import quote_schema

DEFAULT_BATCH = 2000
_LIKE_SPECIAL = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})


@dataclass(slots=True)
class _Where:
    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def _like(pattern: str) -> str:
    """A glob without ``[...]`` as a LIKE pattern (escape character ``\\``)."""
    return pattern.translate(_LIKE_SPECIAL).replace("*", "%").replace("?", "_")


def glob_regex(pattern: str) -> str:
    """A glob (``*``, ``?``, ``[...]``, ``[!...]``) as an anchored POSIX regex, following
    :func:`fnmatch.translate`: an unclosed ``[`` is a literal bracket."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(ch) if not ch.isalnum() else ch)
    out.append("$")
    return "".join(out)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _text_match(where: _Where, exprs: list[str], patterns: tuple[str, ...], fold: bool) -> bool:
    """``any expr equals/LIKEs any pattern``; False when it cannot be expressed in SQL."""
    values = [p.lower() if fold else p for p in patterns]
    if fold:
        exprs = [f"lower({e})" for e in exprs]
    exact = [v for v in values if not _is_glob(v)]
    likes = [_like(v) for v in values if _is_glob(v) and "[" not in v]
    regexes = [glob_regex(v) for v in values if "[" in v]
    parts: list[str] = []
    if exact:
        ref = where.param(exact)
        parts += [f"{e} = ANY({ref}::text[])" for e in exprs]
    if likes:
        ref = where.param(likes)
        parts += [f"{e} LIKE ANY({ref}::text[])" for e in exprs]
    if regexes:
        ref = where.param(regexes)
        parts += [f"{e} ~ ANY({ref}::text[])" for e in exprs]
    where.clauses.append("(" + " OR ".join(parts) + ")")
    return True


def build_where(flt: EventFilter, since: datetime | None, until: datetime | None) -> _Where:
    """The WHERE clauses for ``flt`` (a superset of its matches; see the module docstring)."""
    where = _Where()
    since = since or flt.since
    until = until or flt.until
    if since is not None:
        where.clauses.append(f"ts >= {where.param(since)}")
    if until is not None:
        where.clauses.append(f"ts <= {where.param(until)}")
    if flt.types:
        where.clauses.append(f"type = ANY({where.param(list(flt.types))}::text[])")
    elif not flt.outcome:
        where.clauses.append(
            f"coalesce(type, '') <> ALL({where.param(sorted(HIDDEN_TYPES))}::text[])"
        )
    if flt.outcome:
        where.clauses.append(f"event->>'outcome' = ANY({where.param(list(flt.outcome))}::text[])")
    for column, patterns in (
        ("user_name", flt.user),
        ("database_name", flt.database),
        ("application_name", flt.application),
        ("session_id", flt.session),
    ):
        if patterns:
            _text_match(where, [column], patterns, fold=False)
    if flt.identity:
        _text_match(where, ["(event->>'identity')"], flt.identity, fold=False)
    if flt.client:
        networks, globs = [], []
        for pattern in flt.client:
            try:
                networks.append(str(ipaddress.ip_network(pattern, strict=False)))
            except ValueError:
                globs.append(pattern)  # e.g. "unix", "10.1.*": matched on the text form
        inner = _Where(params=where.params)
        parts = []
        if networks:
            parts.append(f"client_addr <<= ANY({where.param(networks)}::cidr[])")
        if globs and _text_match(inner, ["(event->>'client_addr')"], tuple(globs), fold=False):
            parts.append(inner.clauses[0])
        where.clauses.append("(" + " OR ".join(parts) + ")")
    if flt.command:
        exprs = [
            "command",
            "command_tag",
            "split_part(command, ' ', 1)",
            "split_part(command_tag, ' ', 1)",
        ]
        _text_match(where, exprs, flt.command, fold=True)
    if flt.table:
        bare = all("." not in p for p in flt.table)
        inner = _Where(params=where.params)
        exprs = ["t", "regexp_replace(t, '^.*[.]', '')"]
        if _text_match(inner, exprs if bare else ["t"], flt.table, fold=True):
            where.clauses.append(
                f"EXISTS (SELECT 1 FROM unnest(tables) AS t WHERE {inner.clauses[0]})"
            )
    if flt.action:
        action = "coalesce(action, CASE WHEN type = 'query' THEN 'allow' END)"
        where.clauses.append(f"{action} = ANY({where.param(list(flt.action))}::text[])")
    if flt.rule:
        if not any(_is_glob(r) for r in flt.rule):
            where.clauses.append(f"rules && {where.param(list(flt.rule))}::text[]")
        else:
            inner = _Where(params=where.params)
            if _text_match(inner, ["r"], flt.rule, fold=False):
                where.clauses.append(
                    f"EXISTS (SELECT 1 FROM unnest(rules) AS r WHERE {inner.clauses[0]})"
                )
    if flt.errors:
        where.clauses.append("sqlstate IS NOT NULL")
    if flt.sqlstate:
        prefixes = [s.upper().translate(_LIKE_SPECIAL) + "%" for s in flt.sqlstate]
        where.clauses.append(f"upper(sqlstate) LIKE ANY({where.param(prefixes)}::text[])")
    if flt.min_duration_ms is not None:
        where.clauses.append(f"duration_ms >= {where.param(flt.min_duration_ms)}")
        # Only statement-scoped durations say a statement was slow (docs/audit-log.md).
        where.clauses.append("coalesce(event->>'duration_scope', 'statement') = 'statement'")
    if flt.grep and flt.grep.isascii():
        needle = "%" + flt.grep.translate(_LIKE_SPECIAL) + "%"
        where.clauses.append(f"statement ILIKE {where.param(needle)}")
    return where


def build_query(
    flt: EventFilter,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    schema: str = "public",
) -> tuple[str, list[Any]]:
    where = build_where(flt, since, until)
    text = f"SELECT event::text FROM {quote_schema(schema)}.audit_events"
    if where.clauses:
        text += " WHERE " + " AND ".join(where.clauses)
    return text + " ORDER BY ts, proxy_id, trail_id, seq", where.params


class StoreReader:
    """A server-side cursor over the store, read one batch at a time."""

    def __init__(self, dsn: str, text: str, params: list[Any], schema: str) -> None:
        self.dsn = dsn
        self.text = text
        self.params = params
        self.schema = schema
        self._conn: asyncpg.Connection | None = None
        self._tx: Any = None
        self._cursor: Any = None

    async def open(self) -> None:
        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to the audit store: {exc}") from exc
        try:
            self._tx = self._conn.transaction(readonly=True)
            await self._tx.start()
            self._cursor = await self._conn.cursor(self.text, *self.params)
        except asyncpg.UndefinedTableError as exc:
            await self.close()
            raise StoreError(
                f"no pgwarden audit store at this DSN (schema {self.schema}): {exc}"
            ) from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"reading the audit store failed: {exc}") from exc

    async def fetch(self, count: int) -> list[str]:
        try:
            rows = await self._cursor.fetch(count)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"reading the audit store failed: {exc}") from exc
        return [row[0] for row in rows]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


async def aiter_store_events(
    dsn: str,
    event_filter: EventFilter | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = DEFAULT_BATCH,
    schema: str = "public",
) -> AsyncIterator[dict[str, Any]]:
    """Matching events from the store in (ts, proxy_id, trail_id, seq) order, streamed."""
    flt = event_filter or EventFilter()
    text, params = build_query(flt, since=since, until=until, schema=schema)
    reader = StoreReader(dsn, text, params, schema)
    await reader.open()
    try:
        while rows := await reader.fetch(batch):
            for raw in rows:
                event = orjson.loads(raw)
                if flt.matches(event):
                    yield event
    finally:
        await reader.close()


def iter_store_events(
    dsn: str,
    event_filter: EventFilter | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = DEFAULT_BATCH,
    schema: str = "public",
) -> Iterator[dict[str, Any]]:
    """:func:`aiter_store_events` for synchronous callers (the CLI commands).

    Runs a private event loop, stepped once per batch; not for use inside a running loop.
    Raises :class:`~proxy.errors.StoreError` when the store cannot be read.
    """
    flt = event_filter or EventFilter()
    text, params = build_query(flt, since=since, until=until, schema=schema)
    loop = asyncio.new_event_loop()
    reader = StoreReader(dsn, text, params, schema)
    try:
        loop.run_until_complete(reader.open())
        while rows := loop.run_until_complete(reader.fetch(batch)):
            for raw in rows:
                event = orjson.loads(raw)
                if flt.matches(event):
                    yield event
    finally:
        loop.run_until_complete(reader.close())
        loop.close()
