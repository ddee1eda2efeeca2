"""The store's schema, created and migrated by pgwarden itself.

Migrations are numbered SQL scripts applied in order inside one transaction that holds an
advisory lock, so two proxies starting at the same moment cannot both apply version 1: the
second waits for the lock, then sees the version the first recorded and applies nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from proxy.errors import StoreError

# An arbitrary constant shared by every pgwarden process: "pgwarden schema" as a 64-bit key.
ADVISORY_LOCK_KEY = 0x7067_7761_7264_656E

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str  # uses {schema} for the quoted schema name


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_events table with the filterable columns and their indexes",
        """
        CREATE TABLE {schema}.audit_events (
            proxy_id         text        NOT NULL,
            seq              bigint      NOT NULL,
            ts               timestamptz NOT NULL,
            type             text        NOT NULL,
            session_id       text,
            user_name        text,
            database_name    text,
            application_name text,
            client_addr      inet,
            command          text,
            command_tag      text,
            class            text,
            tables           text[],
            action           text,
            rules            text[],
            sqlstate         text,
            duration_ms      double precision,
            fingerprint      text,
            statement        text,
            event            jsonb       NOT NULL,
            PRIMARY KEY (proxy_id, seq)
        );
        CREATE INDEX audit_events_ts ON {schema}.audit_events (ts, proxy_id, seq);
        CREATE INDEX audit_events_user ON {schema}.audit_events (user_name, ts);
        CREATE INDEX audit_events_action ON {schema}.audit_events (action, ts)
            WHERE action IS NOT NULL;
        CREATE INDEX audit_events_sqlstate ON {schema}.audit_events (sqlstate, ts)
            WHERE sqlstate IS NOT NULL;
        CREATE INDEX audit_events_fingerprint ON {schema}.audit_events (fingerprint);
        CREATE INDEX audit_events_session ON {schema}.audit_events (session_id);
        CREATE INDEX audit_events_tables ON {schema}.audit_events USING gin (tables);
        CREATE INDEX audit_events_rules ON {schema}.audit_events USING gin (rules);
        """,
    ),
    Migration(
        2,
        "events keyed by trail identity and hash; pgwarden_trails registry",
        # Version 1 keyed rows by (proxy_id, seq): two trails under one proxy_id (two proxies
        # on a host, a blue/green restart) collided and half their events were dropped. Rows
        # from then keep their proxy_id as a legacy trail id. With the hash in the key, a row
        # is skipped only when the very same record is already stored.
        """
        ALTER TABLE {schema}.audit_events ADD COLUMN trail_id text, ADD COLUMN hash text;
        UPDATE {schema}.audit_events
           SET trail_id = 'legacy:' || proxy_id, hash = coalesce(event->>'hash', '');
        ALTER TABLE {schema}.audit_events
            ALTER COLUMN trail_id SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
        ALTER TABLE {schema}.audit_events DROP CONSTRAINT audit_events_pkey;
        ALTER TABLE {schema}.audit_events ADD PRIMARY KEY (trail_id, seq, hash);
        DROP INDEX {schema}.audit_events_ts;
        CREATE INDEX audit_events_ts ON {schema}.audit_events (ts, proxy_id, trail_id, seq);
        CREATE INDEX audit_events_proxy ON {schema}.audit_events (proxy_id, ts);
        CREATE TABLE {schema}.pgwarden_trails (
            trail_id   text        PRIMARY KEY,
            proxy_id   text        NOT NULL,
            hostname   text        NOT NULL,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX pgwarden_trails_proxy ON {schema}.pgwarden_trails (proxy_id, last_seen);
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def quote_schema(name: str) -> str:
    """The schema name as a SQL identifier; only plain lower-case names are accepted."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise StoreError(f"invalid store schema name {name!r}: use lower-case letters, digits, _")
    return f'"{name}"'


async def migrate(conn: asyncpg.Connection, schema: str = "public") -> int:
    """Bring the store schema to :data:`LATEST_VERSION`; returns the version found before.

    Refuses a store whose version is newer than this pgwarden knows (a downgrade would
    silently write rows a newer reader does not expect).
    """
    quoted = quote_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.pgwarden_schema_version ("
            " version integer PRIMARY KEY,"
            " description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = await conn.fetchval(
            f"SELECT coalesce(max(version), 0) FROM {quoted}.pgwarden_schema_version"
        )
        if found > LATEST_VERSION:
            raise StoreError(
                f"the audit store schema is at version {found}, newer than this pgwarden "
                f"understands ({LATEST_VERSION}); upgrade pgwarden"
            )
        for migration in MIGRATIONS:
            if migration.version <= found:
                continue
            await conn.execute(migration.sql.format(schema=quoted))
            await conn.execute(
                f"INSERT INTO {quoted}.pgwarden_schema_version (version, description)"
                " VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
    return int(found)
