"""COPY in both directions, simple and extended; CopyFail; errors mid-stream; extra Syncs."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.kit import Target, settle, unique
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e


@pytest.fixture
def table(target: Target) -> Any:
    name = unique("t_copy")
    with target.connect() as conn:
        conn.execute(f"create table {name}(id int primary key, v text)")
    yield name
    with target.connect() as conn:
        conn.execute(f"drop table if exists {name}")


def _count(target: Target, table: str) -> int:
    with target.connect() as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


def test_psycopg_copy_in_and_out(target: Target, table: str) -> None:
    app = unique("copy_psycopg")
    with target.connect(application_name=app) as conn:
        with conn.cursor().copy(f"copy {table} (id, v) from stdin") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        out = io.BytesIO()
        with conn.cursor().copy(f"copy {table} to stdout") as copy:
            for chunk in copy:
                out.write(chunk)
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 1000 and lines[0] == "0\trow 0" and lines[-1] == "999\trow 999"
    if target.proxy is None:
        return
    events = [e for e in settle(target.proxy, app) if e["type"] == "query"]
    got = [(e["statement"].split()[0].lower(), e["command_tag"], e["rows"]) for e in events]
    assert got == [("copy", "COPY 1000", 1000), ("copy", "COPY 1000", 1000)], got


def test_psql_copy(target: Target, table: str, tmp_path: Path) -> None:
    src = tmp_path / "in.tsv"
    src.write_text("".join(f"{i}\tpsql {i}\n" for i in range(500)))
    dst = tmp_path / "out.tsv"
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    cmd = [
        "psql",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        target.dsn(),
        "-c",
        f"\\copy {table} from '{src}'",
        "-c",
        f"\\copy {table} to '{dst}'",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["COPY", "500", "COPY", "500"], done.stdout
    assert dst.read_text() == src.read_text()


def test_asyncpg_copy_extended(target: Target, table: str) -> None:
    async def run() -> tuple[str, bytes]:
        conn = await asyncpg.connect(target.dsn(), timeout=5)
        try:
            status = await conn.copy_records_to_table(
                table, records=[(i, f"apg {i}") for i in range(2000)], columns=["id", "v"]
            )
            sink = io.BytesIO()
            await conn.copy_from_table(table, output=sink, format="csv")
            return str(status), sink.getvalue()
        finally:
            await conn.close()

    status, data = asyncio.run(asyncio.wait_for(run(), 20))
    assert status == "COPY 2000"
    assert data.count(b"\n") == 2000 and data.startswith(b"0,apg 0\n")


def test_raw_copy_fail(target: Target, table: str) -> None:
    with target.raw() as conn:
        conn.send(r.query(f"copy {table} from stdin"))
        assert conn.recv().type == "G"
        conn.send(r.copy_data(b"1\tone\n"), r.copy_fail("client changed its mind"))
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "EZ" and msgs[0].sqlstate == "57014", r.summary(msgs)
        assert "client changed its mind" in msgs[0].fields()["M"]
    assert _count(target, table) == 0


def test_raw_copy_error_while_streaming(target: Target, table: str) -> None:
    """The server errors on an early bad row; the client keeps streaming ~2 MB, then CopyDone."""
    with target.raw(timeout=15) as conn:
        assert conn.simple("begin")[-1].status == "T"
        conn.send(r.query(f"copy {table} from stdin"))
        assert conn.recv().type == "G"
        conn.send(r.copy_data(b"1\tok\nnot-a-number\tbad\n"))
        chunk = b"".join(f"{i}\t{'x' * 40}\n".encode() for i in range(2, 1000))
        for _ in range(50):
            conn.send(r.copy_data(chunk))
        conn.send(r.copy_done())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "EZ", r.summary(msgs)
        assert msgs[0].sqlstate == "22P02" and msgs[-1].status == "E"
        assert conn.recv_quiet(0.3) == [], "CopyData/CopyDone after the error must be dropped"
        assert r.summary(conn.simple("rollback")) == [("C", "ROLLBACK"), ("Z", "I")]
        assert r.types(conn.simple("select 1")) == "TDCZ"
    assert _count(target, table) == 0


@pytest.mark.parametrize("extra_syncs", [1, 2, 3])
def test_raw_extended_copy_extra_syncs(target: Target, table: str, extra_syncs: int) -> None:
    """Syncs sent during COPY-in are ignored by the server: exactly one ReadyForQuery."""
    with target.raw() as conn:
        conn.send(
            r.parse(f"copy {table} from stdin"), r.bind(), r.execute(), *[r.sync()] * extra_syncs
        )
        assert r.types([conn.recv(), conn.recv(), conn.recv()]) == "12G"
        conn.send(r.copy_data(b"1\ta\n2\tb\n"), r.copy_done(), r.sync())
        msgs = conn.recv_until("Z")
        assert r.summary(msgs) == [("C", "COPY 2"), ("Z", "I")]
        assert conn.recv_quiet(0.4) == [], "exactly one ReadyForQuery"
        assert r.summary(conn.simple(f"select count(*) from {table}"))[1] == ("D", ("2",))


def test_raw_extended_copy_flush_during_copy(target: Target, table: str) -> None:
    """Flush and Sync during COPY-in are ignored; the Sync after CopyDone gives the one Z."""
    with target.raw() as conn:
        conn.send(r.parse(f"copy {table} from stdin"), r.bind(), r.execute(), r.flush())
        assert r.types([conn.recv(), conn.recv(), conn.recv()]) == "12G"
        conn.send(r.copy_data(b"7\tseven\n"), r.flush(), r.sync(), r.copy_data(b"8\teight\n"))
        assert conn.recv_quiet(0.3) == [], "nothing is owed before CopyDone"
        conn.send(r.copy_done(), r.sync())
        msgs = conn.recv_until("Z")
        assert r.summary(msgs) == [("C", "COPY 2"), ("Z", "I")]
        assert conn.recv_quiet(0.3) == []
        assert r.types(conn.simple("select 1")) == "TDCZ"


def test_raw_copy_in_inside_pipeline(target: Target, table: str) -> None:
    """COPY as one step of a pipeline: earlier and later steps keep their order."""
    with target.raw() as conn:
        conn.send(
            r.parse("select 'before'"),
            r.bind(),
            r.execute(),
            r.parse(f"copy {table} from stdin"),
            r.bind(),
            r.execute(),
            r.sync(),
        )
        first = [conn.recv() for _ in range(6)]
        assert r.types(first) == "12DC12", r.summary(first)
        assert conn.recv().type == "G"
        conn.send(
            r.copy_data(b"9\tnine\n"),
            r.copy_done(),
            r.sync(),
            r.parse("select 'after'"),
            r.bind(),
            r.execute(),
            r.sync(),
        )
        msgs = conn.recv_n_ready(2)
        assert r.summary(msgs) == [
            ("C", "COPY 1"),
            ("Z", "I"),
            ("1", b""),
            ("2", b""),
            ("D", ("after",)),
            ("C", "SELECT 1"),
            ("Z", "I"),
        ]


def test_raw_extended_copy_out(target: Target, table: str) -> None:
    with target.raw() as conn:
        conn.simple(f"insert into {table} select g, 'o' || g from generate_series(1, 3) g")
        conn.send(r.parse(f"copy {table} to stdout"), r.bind(), r.execute(), r.sync())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "12HdddcCZ", r.summary(msgs)
        assert msgs[-2].tag == "COPY 3"
