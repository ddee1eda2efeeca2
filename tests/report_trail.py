"""Hand-built audit trails for the report and replay tests, and a bulk generator for timing.

Events follow the audit schema v1 (see the brief / docs/audit.md); hash-chain fields are filler
because neither report nor replay verifies the chain. Fingerprints are real pglast fingerprints.

    python tests/report_trail.py DIR --events 1000000   # a big trail for timing the report
"""

from __future__ import annotations

import argparse
import gzip
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pglast import parser

T_HISTORY = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SINCE = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
UNTIL = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)

SQL_A = "SELECT * FROM accounts WHERE id = 1"
SQL_B = "UPDATE accounts SET balance = 0 WHERE id = 7"
SQL_C = "SELECT * FROM missing_table"
SQL_D = "DELETE FROM accounts"
SQL_E = "SELECT pg_sleep(1)"
SQL_F = "SELECT name FROM reports.daily WHERE day = '2026-11-26'"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(sql: str) -> str:
    return str(parser.fingerprint(sql))


class Trail:
    """Builds events with consistent per-proxy seq numbers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._seq: dict[str, int] = {}

    def _base(self, kind: str, ts: datetime, session: dict[str, Any]) -> dict[str, Any]:
        proxy_id = session.get("proxy_id", "pgw-1")
        self._seq[proxy_id] = self._seq.get(proxy_id, 0) + 1
        return {
            "v": 1,
            "type": kind,
            "ts": iso(ts),
            "proxy_id": proxy_id,
            "session_id": session.get("session_id", ""),
            "user": session["user"],
            "database": session.get("database", "app"),
            "application_name": session.get("application_name", ""),
            "client_addr": session.get("client_addr", "127.0.0.1"),
            "client_port": session.get("client_port", 50000),
            "seq": self._seq[proxy_id],
            "prev_hash": "0" * 64,
            "hash": "0" * 64,
        }

    def session_start(self, ts: datetime, session: dict[str, Any]) -> None:
        event = self._base("session_start", ts, session)
        event.update(protocol_version="3.0", backend_pid=4242, tls=False)
        self.events.append(event)

    def session_end(self, ts: datetime, session: dict[str, Any], statements: int) -> None:
        event = self._base("session_end", ts, session)
        event.update(
            duration_ms=1.0,
            statements=statements,
            bytes_from_client=1,
            bytes_to_client=1,
            reason="client_terminate",
        )
        self.events.append(event)

    def auth_failure(self, ts: datetime, session: dict[str, Any]) -> None:
        event = self._base("auth_failure", ts, session)
        event.update(
            sqlstate="28P01", error=f'password authentication failed for user "{session["user"]}"'
        )
        self.events.append(event)

    def query(
        self,
        ts: datetime,
        session: dict[str, Any],
        sql: str | None,
        duration_ms: float,
        *,
        action: str | None = None,
        rules: Sequence[tuple[str, str, str]] = (),
        sqlstate: str | None = None,
        error: str | None = None,
        protocol: str = "simple",
        params: list[Any] | None = None,
        fp_sql: str | None = None,
        command: str = "SELECT",
    ) -> dict[str, Any]:
        event = self._base("query", ts, session)
        event.update(
            statement=sql,
            protocol=protocol,
            statement_name="",
            portal="",
            duration_ms=duration_ms,
            command_tag=None if error else command,
            rows=None if error else 1,
            sqlstate=sqlstate,
            error=error,
            tx_status="I",
            backend_pid=4242,
            command=command,
            tables=[],
            fingerprint=fingerprint(fp_sql or sql) if (fp_sql or sql) else None,
        )
        if params is not None:
            event["params"] = params
        if action is not None:
            event["decision"] = {
                "action": action,
                "intended": action,
                "mode": "enforce",
                "rules": [{"id": r, "action": a, "severity": s} for r, a, s in rules],
            }
        self.events.append(event)
        return event


ALICE = {"session_id": "s1", "user": "alice", "application_name": "billing"}
BOB = {"session_id": "s2", "user": "bob", "application_name": "psql", "client_addr": "10.0.0.5"}
CAROL = {"session_id": "s3", "user": "carol", "database": "reports", "proxy_id": "pgw-2"}
MALLORY = {"user": "mallory", "client_addr": "203.0.113.9"}

BLOCK_RULE = ("no-delete-without-where", "block", "high")
FLAG_RULE = ("slow-functions", "flag", "medium")


def scenario() -> list[dict[str, Any]]:
    """The trail whose numbers the report tests assert (see test_report.py for the sums)."""
    trail = Trail()
    # Before the window: alice ran shape A three times.
    for i in range(3):
        trail.query(T_HISTORY + timedelta(minutes=i), ALICE, SQL_A.replace("1", str(i + 2)), 1.0)

    t = SINCE + timedelta(hours=8)
    trail.session_start(t, ALICE)
    for i in range(10):
        trail.query(t + timedelta(seconds=i + 1), ALICE, SQL_A, float(i + 1))
    trail.query(t + timedelta(seconds=20), ALICE, SQL_B, 20.0, command="UPDATE")
    trail.query(t + timedelta(seconds=21), ALICE, SQL_B, 30.0, command="UPDATE")
    trail.query(
        t + timedelta(seconds=22),
        ALICE,
        SQL_C,
        0.7,
        sqlstate="42P01",
        error='relation "missing_table" does not exist',
    )
    trail.session_end(t + timedelta(minutes=10), ALICE, 13)

    t = SINCE + timedelta(hours=12)
    trail.session_start(t, BOB)
    for i in range(5):
        trail.query(
            t + timedelta(seconds=i + 1),
            BOB,
            SQL_D,
            0.1,
            action="block",
            rules=[BLOCK_RULE],
            sqlstate="42501",
            error="DELETE without WHERE is not allowed",
            command="DELETE",
        )
    for i in range(3):
        trail.query(
            t + timedelta(seconds=10 + i), BOB, SQL_E, 1000.0, action="flag", rules=[FLAG_RULE]
        )
    trail.query(t + timedelta(seconds=20), BOB, SQL_A, 100.0, action="allow")
    trail.session_end(t + timedelta(minutes=1), BOB, 9)

    trail.auth_failure(SINCE + timedelta(hours=13), MALLORY)

    t = SINCE + timedelta(hours=18)
    trail.session_start(t, CAROL)
    for i in range(100):
        trail.query(t + timedelta(seconds=i), CAROL, SQL_F, float(i + 1))
    trail.session_end(t + timedelta(minutes=5), CAROL, 100)

    # After the window: must not count.
    trail.query(UNTIL + timedelta(hours=1), ALICE, SQL_A, 5000.0)
    return trail.events


def write_trail(
    directory: Path,
    events: Iterable[dict[str, Any]],
    *,
    rotate_every: int | None = None,
    gzip_rotated: bool = False,
) -> Path:
    """Write events as a trail: rotated files of ``rotate_every`` events, then audit.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    chunk: list[bytes] = []
    first_seq = 1
    last_ts = ""

    def flush_rotated() -> None:
        nonlocal chunk, first_seq
        when = datetime.fromisoformat(last_ts).strftime("%Y%m%dT%H%M%S")
        name = f"audit-{when}-{first_seq:012d}.jsonl"
        data = b"".join(chunk)
        if gzip_rotated:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (directory / name).write_bytes(data)
        first_seq += len(chunk)
        chunk = []

    for event in events:
        chunk.append(orjson.dumps(event) + b"\n")
        last_ts = event["ts"]
        if rotate_every and len(chunk) >= rotate_every:
            flush_rotated()
    (directory / "audit.jsonl").write_bytes(b"".join(chunk))
    return directory


def bulk(n: int, *, start: datetime = SINCE, seed: int = 7) -> Iterable[dict[str, Any]]:
    """``n`` events of a plausible workload: 40 users, 300 shapes, sessions of ~200 statements,
    1 % errors, 0.5 % flags, 0.2 % blocks, log-normal latencies, spread over 6 days."""
    rng = random.Random(seed)
    shapes = [
        (
            f"SELECT * FROM t{i % 30} WHERE c{i} = {i}",
            fingerprint(f"SELECT * FROM t{i % 30} WHERE c{i} = 1"),
        )
        for i in range(300)
    ]
    step = timedelta(days=6) / n
    seq = 0
    session_no = 0
    made = 0
    while made < n:
        session_no += 1
        user = f"user{rng.randrange(40)}"
        sid = f"sess{session_no:07d}"
        app = rng.choice(("billing", "psql", "reports", "etl"))
        length = rng.randrange(50, 350)
        for _ in range(min(length, n - made)):
            seq += 1
            made += 1
            ts = start + step * made
            sql, fp = shapes[min(int(rng.paretovariate(1.2)) - 1, 299)]
            roll = rng.random()
            event: dict[str, Any] = {
                "v": 1, "type": "query", "ts": iso(ts), "proxy_id": "bench",
                "session_id": sid, "user": user, "database": "app",
                "application_name": app, "client_addr": "10.1.2.3", "client_port": 40000,
                "seq": seq, "prev_hash": "0" * 64, "hash": "f" * 64,
                "statement": sql, "protocol": "simple", "statement_name": "", "portal": "",
                "duration_ms": round(rng.lognormvariate(0.5, 1.2), 3),
                "command_tag": "SELECT 1", "rows": 1, "sqlstate": None, "error": None,
                "tx_status": "I", "backend_pid": 1000 + session_no % 50, "command": "SELECT",
                "class": "read", "tables": ["public.t1"], "fingerprint": fp,
            }  # fmt: skip
            if roll < 0.01:
                event.update(sqlstate="23505", error="duplicate key value", command_tag=None)
            elif roll < 0.015:
                event["decision"] = {"action": "flag", "intended": "flag", "mode": "enforce",
                                     "rules": [{"id": "big-read", "action": "flag",
                                                "severity": "low"}]}  # fmt: skip
            elif roll < 0.017:
                event["decision"] = {"action": "block", "intended": "block", "mode": "enforce",
                                     "rules": [{"id": "no-ddl", "action": "block",
                                                "severity": "high"}]}  # fmt: skip
                event.update(sqlstate="42501", error="blocked")
            yield event


def main(argv: Sequence[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("directory", type=Path)
    cli.add_argument("--events", type=int, default=1_000_000)
    cli.add_argument("--rotate-every", type=int, default=200_000)
    args = cli.parse_args(argv)
    write_trail(args.directory, bulk(args.events), rotate_every=args.rotate_every)


if __name__ == "__main__":
    main()
