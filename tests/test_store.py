"""The central audit store: migrations, shipping from the trail files exactly once and in
order (across rotations, gzip, restarts of the store and of the shipper), and the filter
push-down answering what the same filter answers over the files."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest

from proxy import config, pgrun
from proxy.audit.filters import EventFilter
from proxy.audit.reader import iter_events
from proxy.store import shipper as shipper_module
from proxy.store.query import build_query, iter_store_events
from proxy.store.schema import LATEST_VERSION, MIGRATIONS, migrate
from proxy.store.shipper import StoreShipper, TrailLike
from tests.support.pgcluster import PgServer

pytestmark = pytest.mark.e2e  # starts its own PostgreSQL clusters

T0 = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)


class FileTrail:
    """Writes trail files the way AuditTrail lays them out (audit.jsonl, rotated
    audit-<ts>-<first seq>.jsonl[.gz]) and calls listeners after each written batch."""

    def __init__(self, directory: Path, proxy_id: str) -> None:
        self.directory = directory
        self.proxy_id = proxy_id
        self.seq = 0
        self.healthy = True
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.first_in_current = 1
        self.rotations = 0
        directory.mkdir(parents=True, exist_ok=True)

    def add_listener(self, fn: Callable[[list[dict[str, Any]]], None]) -> None:
        self.listeners.append(fn)

    def write(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        written = []
        with (self.directory / "audit.jsonl").open("ab") as handle:
            for event in events:
                self.seq += 1
                record = {**event, "proxy_id": self.proxy_id, "seq": self.seq}
                # A hash of the content, so two trails with equal seqs differ as real ones do.
                record["prev_hash"] = "0" * 64
                record["hash"] = hashlib.sha256(orjson.dumps(record)).hexdigest()
                handle.write(orjson.dumps(record) + b"\n")
                written.append(record)
        for fn in self.listeners:
            fn(written)
        return written

    def rotate(self, compress: bool) -> None:
        when = (T0 + timedelta(minutes=self.rotations)).strftime("%Y%m%dT%H%M%S")
        rotated = self.directory / f"audit-{when}-{self.first_in_current:012d}.jsonl"
        os.rename(self.directory / "audit.jsonl", rotated)
        (self.directory / "audit.jsonl").touch()
        self.first_in_current = self.seq + 1
        self.rotations += 1
        if compress:
            with rotated.open("rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
                dst.write(src.read())
            rotated.unlink()


USERS = ("alice", "bob", "carol", "svc_report")
APPS = ("psql", "billing", "", "report-job")
CLIENTS = ("127.0.0.1", "10.1.2.3", "192.168.7.9", "unix", "::1")
SHAPES: tuple[tuple[str, str, list[str], str], ...] = (
    ("SELECT", "read", ["public.orders"], "SELECT * FROM orders WHERE id = 7"),
    (
        "SELECT",
        "read",
        ["public.users", "public.orders"],
        "SELECT u.name FROM users u JOIN orders o ON o.uid = u.id",
    ),
    ("UPDATE", "write", ["public.users"], "UPDATE users SET name = 'x' WHERE id = 1"),
    ("DELETE", "write", ["billing.invoices"], "DELETE FROM billing.invoices"),
    ("DROP TABLE", "ddl", ["public.audit_me"], "DROP TABLE audit_me"),
    ("BEGIN", "transaction", [], "BEGIN"),
)


def make_events(count: int, rng: random.Random, start: datetime = T0) -> list[dict[str, Any]]:
    """Varied events of every type; ts strictly increasing per call."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        ts = (start + timedelta(milliseconds=37 * i + rng.randrange(30))).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        base = {
            "v": 1,
            "ts": ts,
            "session_id": f"s{rng.randrange(6):02d}",
            "user": rng.choice(USERS),
            "database": rng.choice(("app", "postgres")),
            "application_name": rng.choice(APPS),
            "client_addr": rng.choice(CLIENTS),
            "client_port": 40000 + rng.randrange(1000),
        }
        identity = rng.choice((None, None, "alice@corp", "CN=bob,O=x", "carol"))
        if identity is not None:
            base["identity"] = identity
            base["identity_source"] = "client_supplied" if "@" in identity else "certificate"
        kind = rng.random()
        if kind < 0.08:
            out.append(
                {
                    **base,
                    "type": "auth_failure",
                    "sqlstate": "28P01",
                    "error": "password authentication failed",
                }
            )
        elif kind < 0.14:
            out.append(
                {
                    **base,
                    "type": "session_start",
                    "protocol_version": "3.0",
                    "backend_pid": 4242,
                    "tls": False,
                }
            )
        else:
            command, klass, tables, statement = rng.choice(SHAPES)
            action = rng.choice(("allow", "allow", "allow", "flag", "block"))
            rules = (
                []
                if action == "allow"
                else [
                    {
                        "id": rng.choice(("no-ddl", "pii-read", "no-delete-all")),
                        "action": action,
                        "severity": "high",
                    }
                ]
            )
            failed = action == "block" or rng.random() < 0.1
            sqlstate = (
                ("42501" if action == "block" else rng.choice(("23505", "40001", "57014")))
                if failed
                else None
            )
            out.append(
                {
                    **base,
                    "type": "query",
                    "statement": statement + (" -- Ünïcode" if rng.random() < 0.1 else ""),
                    "protocol": "simple",
                    "duration_ms": round(rng.expovariate(1 / 40), 3),
                    "command_tag": None if failed else command,
                    "rows": None if failed else rng.randrange(100),
                    "sqlstate": sqlstate,
                    "error": "denied" if failed else None,
                    "tx_status": "I",
                    "backend_pid": 4242,
                    "command": command,
                    "class": klass,
                    "tables": tables,
                    "fingerprint": f"fp{SHAPES.index((command, klass, tables, statement))}",
                    "decision": {
                        "action": action,
                        "intended": action,
                        "mode": "enforce",
                        "rules": rules,
                    },
                }
            )
    return out


def store_config(audit_dir: Path, dsn: str, **sink: Any) -> config.Config:
    return config.defaults().replace(
        audit__dir=str(audit_dir), audit__sinks=[{"type": "postgres", "dsn": dsn, **sink}]
    )


async def wait_until(predicate: Callable[[], Any], within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def stored(dsn: str, proxy_id: str | None = None) -> list[tuple[str, int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT proxy_id, seq, event::text FROM audit_events"
            " WHERE $1::text IS NULL OR proxy_id = $1 ORDER BY proxy_id, seq",
            proxy_id,
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


async def count_rows(dsn: str) -> int:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_events"))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def store_dsn(pg: PgServer) -> Iterator[str]:
    """A database of its own on the suite's server, dropped at the end of the module."""
    name = f"pgwarden_store_{uuid.uuid4().hex[:10]}"
    admin = pg.dsn()

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    try:
        yield pg.dsn(database=name)
    finally:
        asyncio.run(run(f"DROP DATABASE {name} WITH (FORCE)"))


@asynccontextmanager
async def shipping(cfg: config.Config, trail: TrailLike) -> AsyncIterator[StoreShipper]:
    shipper = StoreShipper(cfg, trail, trail.proxy_id)
    await shipper.start()
    try:
        yield shipper
    finally:
        await shipper.aclose()


def test_migrations_are_applied_once_even_by_concurrent_proxies(store_dsn: str) -> None:
    async def main() -> None:
        conns = [await asyncpg.connect(store_dsn) for _ in range(3)]
        try:
            found = await asyncio.gather(*(migrate(c, "race") for c in conns))
            assert sorted(found) == [0, LATEST_VERSION, LATEST_VERSION]
            rows = await conns[0].fetch("SELECT version FROM race.pgwarden_schema_version")
            assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
            assert await migrate(conns[0], "race") == LATEST_VERSION
            await conns[0].execute("INSERT INTO race.pgwarden_schema_version VALUES (99, 'future')")
            with pytest.raises(Exception, match="newer than this pgwarden"):
                await migrate(conns[1], "race")
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(main())


def test_two_proxies_ship_exactly_once_across_a_store_restart(
    tmp_path: Path, store_server: pgrun.LocalCluster
) -> None:
    dsn = store_server.dsn(database="postgres")
    rng = random.Random(5)
    trails = [FileTrail(tmp_path / name, name) for name in ("proxy-a", "proxy-b")]
    written: dict[str, list[dict[str, Any]]] = {t.proxy_id: [] for t in trails}

    def write_round(n: int) -> None:
        for trail in trails:
            written[trail.proxy_id] += trail.write(make_events(n, rng))

    async def main() -> None:
        # Proxy a has a history before its shipper ever ran, across rotations (one gzipped).
        write_round(120)
        trails[0].rotate(compress=True)
        write_round(80)
        trails[0].rotate(compress=False)
        cfgs = [store_config(t.directory, dsn, batch_size=50) for t in trails]
        async with shipping(cfgs[0], trails[0]) as ship_a, shipping(cfgs[1], trails[1]) as ship_b:
            # (Before its first connection a shipper cannot know its backlog: wait for rows.)
            await wait_until(lambda: _eq(count_rows(dsn), 400))
            await wait_until(lambda: ship_a.backlog == 0 and ship_b.backlog == 0 and ship_a.healthy)
            for step in range(6):
                write_round(30)
                if step == 1:
                    store_server.pause()  # the store goes away
                if step == 3:
                    trails[1].rotate(compress=True)
            await wait_until(lambda: not ship_a.healthy and not ship_b.healthy)
            assert ship_a.backlog > 0 and ship_b.backlog > 0  # observable, growing
            assert ship_a.stats["errors"] >= 1
            store_server.resume()
            total = sum(len(v) for v in written.values())
            await wait_until(lambda: _eq(count_rows(dsn), total))
            await wait_until(lambda: ship_a.healthy and ship_b.healthy and ship_a.backlog == 0)
        for trail in trails:
            rows = await stored(dsn, trail.proxy_id)
            assert [seq for _p, seq, _e in rows] == list(range(1, trail.seq + 1))
            assert [orjson.loads(e) for _p, _s, e in rows] == written[trail.proxy_id]

    asyncio.run(main())


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


def test_a_restarted_shipper_resumes_after_what_the_store_holds(
    tmp_path: Path, store_dsn: str
) -> None:
    rng = random.Random(9)
    trail = FileTrail(tmp_path / "audit", f"resume-{uuid.uuid4().hex[:6]}")
    cfg = store_config(trail.directory, store_dsn, batch_size=64)

    async def main() -> None:
        trail.write(make_events(100, rng))
        async with shipping(cfg, trail) as first:
            await wait_until(lambda: first.backlog == 0 and first.stats["shipped"] == 100)
        trail.write(make_events(30, rng))  # written while no shipper runs
        trail.rotate(compress=True)
        trail.write(make_events(5, rng))
        async with shipping(cfg, trail) as second:
            await wait_until(lambda: second.stats["shipped"] == 35 and second.backlog == 0)
            trail.write(make_events(7, rng))  # the listener wakes the shipper
            await wait_until(lambda: second.stats["shipped"] == 42)
        rows = await stored(store_dsn, trail.proxy_id)
        assert [seq for _p, seq, _e in rows] == list(range(1, 143))

    asyncio.run(main())


def test_a_torn_last_line_waits_until_it_is_complete(tmp_path: Path, store_dsn: str) -> None:
    trail = FileTrail(tmp_path / "audit", f"torn-{uuid.uuid4().hex[:6]}")
    cfg = store_config(trail.directory, store_dsn)

    async def main() -> None:
        trail.write(make_events(3, random.Random(1)))
        record = {**make_events(1, random.Random(2))[0], "proxy_id": trail.proxy_id, "seq": 4}
        record["prev_hash"], record["hash"] = f"{3:064x}", f"{4:064x}"
        line = orjson.dumps(record) + b"\n"
        async with shipping(cfg, trail) as shipper:
            with (trail.directory / "audit.jsonl").open("ab") as handle:
                handle.write(line[:40])
                handle.flush()
                shipper.sinks[0].wake(4)
                await wait_until(lambda: shipper.stats["shipped"] == 3)
                handle.write(line[40:])
            shipper.sinks[0].wake(4)
            await wait_until(lambda: shipper.stats["shipped"] == 4)
        rows = await stored(store_dsn, trail.proxy_id)
        assert orjson.loads(rows[-1][2]) == record

    asyncio.run(main())


FILTERS: list[EventFilter] = [
    EventFilter(),
    EventFilter(user=("alice",)),
    EventFilter(user=("svc_*",), database=("app",)),
    EventFilter(application=("billing", "report-?ob")),
    EventFilter(identity=("alice@corp",)),
    EventFilter(identity=("CN=*", "car[o]l")),
    EventFilter(client=("10.0.0.0/8",)),
    EventFilter(client=("127.0.0.1", "::1")),
    EventFilter(client=("unix",)),
    EventFilter(session=("s0[12]",)),
    EventFilter(command=("delete",)),
    EventFilter(command=("DROP",)),
    EventFilter(command=("up*",), errors=True),
    EventFilter(table=("orders",)),
    EventFilter(table=("billing.*",)),
    EventFilter(table=("public.USERS",)),
    EventFilter(action=("block",)),
    EventFilter(action=("allow",)),
    EventFilter(rule=("no-ddl",)),
    EventFilter(rule=("no-*",), action=("flag",)),
    EventFilter(errors=True),
    EventFilter(sqlstate=("28",)),
    EventFilter(sqlstate=("42501", "23")),
    EventFilter(min_duration_ms=60.0),
    EventFilter(grep="JOIN orders"),
    EventFilter(grep="ünïcode"),
    EventFilter(types=("auth_failure", "session_start")),
    EventFilter(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=9)),
    EventFilter(types=("query",), user=("bob", "carol"), action=("block",), table=("users",)),
]


def test_filter_push_down_returns_what_the_files_return(tmp_path: Path, store_dsn: str) -> None:
    rng = random.Random(11)
    trails = [FileTrail(tmp_path / p, f"{p}-{uuid.uuid4().hex[:6]}") for p in ("x", "y")]
    for trail in trails:
        trail.write(make_events(350, rng))
        trail.rotate(compress=True)
        trail.write(make_events(250, rng, start=T0 + timedelta(seconds=14)))

    async def ship_all() -> None:
        for trail in trails:
            async with shipping(store_config(trail.directory, store_dsn), trail) as shipper:
                await wait_until(lambda s=shipper: s.stats["shipped"] == 600)  # type: ignore[misc]

    asyncio.run(ship_all())
    mine = {t.proxy_id for t in trails}
    nonempty = 0
    for flt in FILTERS:
        from_files = [e for t in trails for e in iter_events(t.directory) if flt.matches(e)]
        from_files.sort(key=lambda e: (e["ts"], e["proxy_id"], e["seq"]))
        from_store = [
            e for e in iter_store_events(store_dsn, flt, batch=97) if e["proxy_id"] in mine
        ]
        # The store orders by (ts, trail identity, seq); two trails' events with the same ts
        # may come in either order, so compare in one order.
        assert [e["ts"] for e in from_store] == sorted(e["ts"] for e in from_store), flt
        from_store.sort(key=lambda e: (e["ts"], e["proxy_id"], e["seq"]))
        assert from_store == from_files, flt
        nonempty += bool(from_files)
        text, _params = build_query(flt)
        # A non-ASCII grep stays in Python: the server's lower() may not fold like casefold().
        if flt != EventFilter() and (flt.grep or "").isascii():
            assert " WHERE " in text, flt  # narrowed in SQL, not only in Python
    assert nonempty >= len(FILTERS) - 1  # the filters select something real


def test_push_down_binds_values_never_splices_them() -> None:
    evil = "x'); DROP TABLE audit_events; --"
    text, params = build_query(EventFilter(user=(evil,), grep=evil, table=(evil,)))
    assert evil not in text
    assert [evil] in params


def test_the_real_trail_rotating_and_gzipping_while_shipping(
    tmp_path: Path, store_dsn: str
) -> None:
    from proxy.alerts.engine import AlertEngine
    from proxy.audit.trail import AuditTrail

    proxy_id = f"real-{uuid.uuid4().hex[:6]}"
    cfg = store_config(tmp_path / "audit", store_dsn, batch_size=40).replace(
        audit__rotate_size="6kB", audit__compress_rotated=True
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nalerts:\n  - id: blocks\n    filter: {action: block}\n"
        "    threshold: 'count >= 10 in 1h'\n    cooldown: 0s\n"
    )
    rng = random.Random(3)

    async def main() -> None:
        trail = AuditTrail(cfg, proxy_id)
        trail.open()
        engine = AlertEngine.from_files([rules])
        engine.attach(trail)
        shipper = StoreShipper(cfg, trail, proxy_id)
        await shipper.start()
        for _ in range(30):
            for event in make_events(20, rng):
                trail.submit({**event, "proxy_id": proxy_id})
            await asyncio.sleep(0.01)  # let flushes, rotations and shipping interleave
        done = asyncio.Event()
        trail.when_written(done.set)
        await asyncio.wait_for(done.wait(), 10)
        await wait_until(lambda: shipper.backlog == 0 and shipper.healthy)
        await shipper.aclose()
        await engine.aclose()
        await trail.aclose()
        rows = await stored(store_dsn, proxy_id)
        on_disk = list(iter_events(cfg["audit.dir"]))
        assert trail.stats.rotations >= 3
        assert list((tmp_path / "audit").glob("audit-*.jsonl.gz"))
        assert [orjson.loads(e) for _p, _s, e in rows] == on_disk
        assert [s for _p, s, _e in rows] == list(range(1, len(on_disk) + 1))
        alerts = [e for e in on_disk if e["type"] == "alert"]
        assert alerts and all(a["proxy_id"] == proxy_id for a in alerts)

    asyncio.run(main())


def test_a_deleted_file_is_reported_as_a_gap_and_the_rest_is_shipped(
    tmp_path: Path, store_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    trail = FileTrail(tmp_path / "audit", f"gap-{uuid.uuid4().hex[:6]}")
    rng = random.Random(4)
    trail.write(make_events(10, rng))
    trail.rotate(compress=False)
    trail.write(make_events(10, rng))
    trail.rotate(compress=True)
    trail.write(make_events(5, rng))
    next(trail.directory.glob("audit-*-000000000011.jsonl.gz")).unlink()  # seq 11..20 lost

    async def main() -> None:
        async with shipping(store_config(trail.directory, store_dsn), trail) as shipper:
            await wait_until(lambda: shipper.stats["shipped"] == 15)
            assert shipper.stats["gaps"] == 1
        rows = await stored(store_dsn, trail.proxy_id)
        assert [s for _p, s, _e in rows] == [*range(1, 11), *range(21, 26)]

    asyncio.run(main())
    assert any("expected seq 11, found 21" in r.getMessage() for r in caplog.records)


async def stored_by_trail(dsn: str, proxy_id: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT trail_id, event::text FROM audit_events WHERE proxy_id = $1"
            " ORDER BY trail_id, seq, ts",
            proxy_id,
        )
    finally:
        await conn.close()
    out: dict[str, list[dict[str, Any]]] = {}
    for trail_id, text in rows:
        out.setdefault(trail_id, []).append(orjson.loads(text))
    return out


def test_two_trails_under_one_proxy_id_are_both_stored_and_reported(
    tmp_path: Path, store_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two proxies on one host with default settings: same proxy_id, same seqs, different
    trails. Version 1 of the store kept only the first event of each seq."""
    monkeypatch.setattr(shipper_module, "HEARTBEAT_SECONDS", 0.1)
    proxy_id = f"host-{uuid.uuid4().hex[:6]}"
    trails = [FileTrail(tmp_path / name, proxy_id) for name in ("blue", "green")]
    rng = random.Random(11)
    written = {t.directory.name: t.write(make_events(60, rng)) for t in trails}

    async def main() -> None:
        cfgs = [store_config(t.directory, store_dsn, batch_size=16) for t in trails]
        async with shipping(cfgs[0], trails[0]) as a, shipping(cfgs[1], trails[1]) as b:
            await wait_until(lambda: a.stats["shipped"] == 60 and b.stats["shipped"] == 60)
            for trail in trails:
                written[trail.directory.name] += trail.write(make_events(15, rng))
            await wait_until(lambda: a.backlog == 0 and b.backlog == 0)
            await wait_until(lambda: a.conflicts and b.conflicts)
            assert b.trail_id in a.conflicts[0] and a.trail_id in b.conflicts[0]
            assert a.stats["identity_conflicts"] == 1.0
            by_trail = await stored_by_trail(store_dsn, proxy_id)
            assert by_trail == {
                a.trail_id: written["blue"],
                b.trail_id: written["green"],
            }

    asyncio.run(main())


def test_a_copied_audit_directory_never_loses_either_trail(
    tmp_path: Path, store_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two trails that share one trail id (a directory copied with its audit.id) and whose
    records diverge after seq 40: the store keeps every record of both."""
    rng = random.Random(12)
    original = FileTrail(tmp_path / "original", f"copy-{uuid.uuid4().hex[:6]}")
    common = original.write(make_events(40, rng))

    async def main() -> None:
        cfg = store_config(original.directory, store_dsn)
        async with shipping(cfg, original) as first:
            await wait_until(lambda: first.stats["shipped"] == 40)
        shutil.copytree(original.directory, tmp_path / "copy")
        copy = FileTrail(tmp_path / "copy", original.proxy_id)
        copy.seq = original.seq
        mine = original.write(make_events(30, rng))  # the store will hold seq 1..70
        theirs = copy.write(make_events(20, rng))  # 41..60, other records
        async with shipping(cfg, original) as again:
            await wait_until(lambda: again.stats["shipped"] == 30)
        copy_cfg = store_config(copy.directory, store_dsn)
        async with shipping(copy_cfg, copy) as shipper:
            assert shipper.trail_id == first.trail_id
            await wait_until(lambda: shipper.backlog == 0 and shipper.healthy)
            assert shipper.conflicts and "copied audit directory" in shipper.conflicts[0]
        by_trail = await stored_by_trail(store_dsn, original.proxy_id)
        stored_events = by_trail[first.trail_id]
        key = lambda e: (e["seq"], e["hash"])  # noqa: E731
        assert sorted(stored_events, key=key) == sorted(common + mine + theirs, key=key)

    asyncio.run(main())
    assert any("two trails share one identity" in r.getMessage() for r in caplog.records)


def test_version_1_rows_are_kept_as_legacy_trails(store_dsn: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(store_dsn)
        try:
            await conn.execute("CREATE SCHEMA v1")
            await conn.execute(
                "CREATE TABLE v1.pgwarden_schema_version (version integer PRIMARY KEY,"
                " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(MIGRATIONS[0].sql.format(schema='"v1"'))
            await conn.execute("INSERT INTO v1.pgwarden_schema_version VALUES (1, 'v1')")
            await conn.execute(
                "INSERT INTO v1.audit_events (proxy_id, seq, ts, type, event)"
                """ VALUES ('old-host', 1, now(), 'query', '{"hash": "abc"}')"""
            )
            assert await migrate(conn, "v1") == 1
            row = await conn.fetchrow("SELECT trail_id, hash FROM v1.audit_events")
            assert tuple(row) == ("legacy:old-host", "abc")
        finally:
            await conn.close()

    asyncio.run(main())


def test_a_long_catch_up_reports_its_progress(
    tmp_path: Path,
    store_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(shipper_module, "CATCH_UP_REPORT", 0.0)  # every batch, for the test
    trail = FileTrail(tmp_path / "audit", f"catchup-{uuid.uuid4().hex[:6]}")
    trail.write(make_events(500, random.Random(13)))
    (trail.directory / "audit.head").write_text('{"seq": 500, "hash": "x"}')

    async def main() -> None:
        cfg = store_config(trail.directory, store_dsn, batch_size=100)
        async with shipping(cfg, trail) as shipper:
            await wait_until(lambda: shipper.stats["shipped"] == 500)

    with caplog.at_level("INFO", logger="pgwarden.store"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "catching up" in r.getMessage()]
    assert lines and "100 events shipped, 400 behind" in lines[0] and "events/s" in lines[0]
    assert any("caught up at seq 500" in r.getMessage() for r in caplog.records)
