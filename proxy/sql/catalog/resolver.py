"""Name function OIDs that are not shipped built-ins by asking the server's catalog.

A FunctionCall (fast-path) message names its function by OID only. Built-ins are named from
the shipped list; an extension's or a user's function (adminpack's ``pg_file_write``) has an
OID chosen when it was created, different in every database. :class:`FunctionResolver` looks
such OIDs up in ``pg_proc`` through a :data:`Fetch` the server provides (a connection of
pgwarden's own, see :class:`AsyncpgFetch`), and caches the answers per server and database
until :meth:`FunctionResolver.invalidate` — which the session calls after a statement that may
have created, dropped or renamed functions (:func:`invalidates_functions`).

Lookups never raise: a server that cannot be asked, or does not answer within the timeout,
leaves the OID unresolved (the call is then judged as opaque), and the failure is not cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from proxy.sql.facts import QueryFacts


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What the catalog says about one function."""

    oid: int
    schema: str
    name: str
    arg_types: tuple[int, ...]  # pg_proc.proargtypes (input arguments)


@dataclass(frozen=True, slots=True)
class CatalogKey:
    """Whose catalog: one database of one server (OIDs of non-shared objects are per
    database)."""

    server: str  # e.g. "host:port" of the upstream
    database: str


# Look up these OIDs in the catalog of ``key``'s database; OIDs not in pg_proc are left out.
Fetch = Callable[[CatalogKey, tuple[int, ...]], Awaitable[dict[int, FunctionInfo]]]

LOOKUP_SQL = """
SELECT p.oid::int, n.nspname, p.proname, p.proargtypes::oid[]::int[]
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.oid = ANY($1::oid[])
"""

_DDL_TAG_WORDS = frozenset(
    {"FUNCTION", "PROCEDURE", "ROUTINE", "AGGREGATE", "EXTENSION", "SCHEMA", "LANGUAGE"}
)


def invalidates_functions(facts: QueryFacts) -> bool:
    """True when running ``facts`` may create, drop, rename or move functions (or cannot be
    told): the session then invalidates its database's cache after the statement completes."""
    if not facts.parsable:
        return True
    for stmt in facts.statements:
        if stmt.opaque:
            return True  # dynamic SQL or an unresolved EXECUTE may be DDL
        for tag in stmt.effective_commands:
            words = tag.split()
            if words[:1] in (["CREATE"], ["ALTER"], ["DROP"]) and _DDL_TAG_WORDS & set(words):
                return True
            if tag in ("DROP OWNED", "REASSIGN OWNED", "DO"):
                return True
    return False


class FunctionResolver:
    """Cached OID -> :class:`FunctionInfo` per :class:`CatalogKey` (bounded, LRU)."""

    def __init__(
        self, fetch: Fetch, *, timeout: float = 2.0, max_entries_per_database: int = 10_000
    ) -> None:
        self._fetch = fetch
        self.timeout = timeout
        self.max_entries = max_entries_per_database
        # None: the server said the OID is no function (cached too, until invalidated)
        self._cache: dict[CatalogKey, dict[int, FunctionInfo | None]] = {}
        self._inflight: dict[tuple[CatalogKey, int], asyncio.Future[FunctionInfo | None]] = {}
        self._generation: dict[CatalogKey, int] = {}
        self.lookups = 0
        self.failures = 0

    async def resolve(self, key: CatalogKey, oid: int) -> FunctionInfo | None:
        """The function with this OID in ``key``'s database, or None (not a function, or the
        catalog could not be asked)."""
        entries = self._cache.get(key)
        if entries is not None and oid in entries:
            info = entries.pop(oid)
            entries[oid] = info  # most recently used last
            return info
        pending = self._inflight.get((key, oid))
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[FunctionInfo | None] = asyncio.get_running_loop().create_future()
        self._inflight[(key, oid)] = future
        generation = self._generation.get(key, 0)
        try:
            info, ok = await self._lookup(key, oid)
            if ok and self._generation.get(key, 0) == generation:
                self._store(key, oid, info)
            future.set_result(info)
            return info
        finally:
            del self._inflight[(key, oid)]
            if not future.done():
                future.set_result(None)

    async def _lookup(self, key: CatalogKey, oid: int) -> tuple[FunctionInfo | None, bool]:
        self.lookups += 1
        try:
            found = await asyncio.wait_for(self._fetch(key, (oid,)), self.timeout)
        except Exception:  # unreachable, timed out, refused: unresolved, not cached
            self.failures += 1
            return None, False
        return found.get(oid), True

    def _store(self, key: CatalogKey, oid: int, info: FunctionInfo | None) -> None:
        entries = self._cache.setdefault(key, {})
        entries[oid] = info
        if len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def invalidate(self, key: CatalogKey | None = None) -> None:
        """Forget ``key``'s answers (every database's when None); lookups already running
        for it are not cached."""
        keys: Iterable[CatalogKey] = list(self._cache) if key is None else (key,)
        for k in keys:
            self._cache.pop(k, None)
            self._generation[k] = self._generation.get(k, 0) + 1
        if key is None:
            for k, _oid in list(self._inflight):
                self._generation[k] = self._generation.get(k, 0) + 1

    def cached(self, key: CatalogKey) -> int:
        return len(self._cache.get(key, {}))


class AsyncpgFetch:
    """A :data:`Fetch` over asyncpg: one short-lived connection per lookup, to the DSN
    ``dsn_for(key)`` returns (pgwarden's own catalog role; it needs only CONNECT — pg_proc is
    readable by every role)."""

    def __init__(self, dsn_for: Callable[[CatalogKey], str], connect_timeout: float = 2.0) -> None:
        self._dsn_for = dsn_for
        self._connect_timeout = connect_timeout

    async def __call__(self, key: CatalogKey, oids: tuple[int, ...]) -> dict[int, FunctionInfo]:
        import asyncpg

        conn = await asyncpg.connect(self._dsn_for(key), timeout=self._connect_timeout)
        try:
            rows = await conn.fetch(LOOKUP_SQL, list(oids))
        finally:
            await conn.close()
        return {
            int(oid): FunctionInfo(int(oid), str(schema), str(name), tuple(int(t) for t in types))
            for oid, schema, name, types in rows
        }
