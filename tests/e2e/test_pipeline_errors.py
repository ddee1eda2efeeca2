"""A server error reaches the client while the client is still streaming its pipeline.

PostgreSQL answers an Execute that fails as soon as it fails, and then discards everything up
to the next Sync. A driver that reads while it writes (psycopg's pipeline mode, asyncpg's
``executemany``) sees that error mid-stream and stops sending the rest of a long batch. Through
pgwarden it must be the same: the proxy must not hold the error until the Sync, nor stop
relaying server messages while the client's stream towards the server is back-pressured.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.kit import Target, admin, unique, wait_events
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e

ROW = 1 << 20  # bytes of payload per row
# A 160 MB pipeline. On loopback Linux autotunes a receive buffer up to tcp_rmem's maximum
# (32 MB on some hosts), and between the client and the server there are two connections
# through a proxy: up to ~75 MB can be in flight without anyone holding anything back. Half
# of the rest of the pipeline is well above that, and far below "all of it".
ROWS = 160
CHUNK = 64 * 1024  # the client's write size: it checks for replies between writes


@dataclass(frozen=True, slots=True)
class Streamed:
    """What a streaming client saw: bytes of the pipeline it had written when the server's
    ErrorResponse arrived, and in all (it stops at the next message boundary after it)."""

    total: int  # the whole pipeline
    sent_at_error: int
    sent: int
    replies: str  # message types received, up to the ReadyForQuery
    sqlstate: str | None


@pytest.fixture
def dup_table(pg: object) -> Iterator[str]:
    """``(id int primary key, v text)`` holding ids 1 and -1; sessions using it set
    application_name to its name. Inserting id -1 takes the server a while (a BEFORE trigger
    sleeps), so a client streaming behind it is back-pressured when the error comes."""
    name = unique("pipe_dup")
    with admin(pg) as conn:
        conn.execute(f"create table {name} (id int primary key, v text)")
        conn.execute(f"insert into {name} values (1, 'first'), (-1, 'slow')")
        conn.execute(
            f"create function {name}_slow() returns trigger language plpgsql as"
            " $$ begin if new.id = -1 then perform pg_sleep(0.3); end if; return new; end $$"
        )
        conn.execute(
            f"create trigger slow before insert on {name}"
            f" for each row execute function {name}_slow()"
        )
        conn.execute(f"grant all on {name} to public")
    try:
        yield name
    finally:
        with admin(pg) as conn:
            # A session left stuck (a failed run) would hold its lock on the table.
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where application_name = %s",
                (name,),
            )
            conn.execute(f"drop table if exists {name}")
            conn.execute(f"drop function if exists {name}_slow()")


class _Replies:
    """What the reading thread saw."""

    def __init__(self) -> None:
        self.types: list[str] = []
        self.error = threading.Event()  # an ErrorResponse arrived
        self.sent_at_error = -1
        self.sqlstate: str | None = None
        self.failure: OSError | None = None


def stream_pipeline(
    conn: r.RawConn, messages: Callable[[], Iterable[bytes]], timeout: float = 20
) -> Streamed:
    """Write the ``messages()`` (built one by one, never all in memory) then a Sync, reading
    replies on a second thread meanwhile; once an ErrorResponse has arrived, stop after the
    message being written (as a driver does) and send the Sync at once."""
    sock = conn.sock
    sock.settimeout(timeout)
    total = sum(len(m) for m in messages())
    sent = 0
    seen = _Replies()

    def read() -> None:
        buf = bytearray()
        try:
            while True:
                while len(buf) >= 5:
                    (length,) = struct.unpack_from("!I", buf, 1)
                    if len(buf) < 1 + length:
                        break
                    kind = chr(buf[0])
                    body = bytes(buf[5 : 1 + length])
                    del buf[: 1 + length]
                    seen.types.append(kind)
                    if kind == "E" and not seen.error.is_set():
                        seen.sent_at_error = sent  # what the writer has written by now
                        seen.sqlstate = r.Msg(kind, body).sqlstate
                        seen.error.set()
                    if kind == "Z":
                        return
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
        except OSError as exc:
            seen.failure = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for message in messages():
            view = memoryview(message)
            for start in range(0, len(view), CHUNK):
                sock.sendall(view[start : start + CHUNK])
                sent += min(CHUNK, len(view) - start)
            if seen.error.is_set():
                break
        sock.sendall(r.sync())
    except TimeoutError:
        raise AssertionError(
            f"the stream stalled for {timeout} s after {sent} of {total} bytes"
            f" ({'an' if seen.error.is_set() else 'no'} error received)"
        ) from None
    reader.join(timeout)
    assert not reader.is_alive(), "no ReadyForQuery after the Sync"
    assert seen.failure is None, seen.failure
    return Streamed(total, seen.sent_at_error, sent, "".join(seen.types), seen.sqlstate)


def _insert_pipeline(
    table: str, ids: list[int], returning: bool = False
) -> Callable[[], Iterator[bytes]]:
    payload = "x" * ROW
    sql = f"insert into {table} values ($1, $2)" + (" returning repeat(v, 8)" if returning else "")

    def messages() -> Iterator[bytes]:
        yield r.parse(sql, "ins")
        for i in ids:
            yield r.bind("", "ins", [str(i), payload]) + r.execute()

    return messages


# (ids inserted, RETURNING their values): the duplicate is 1 or -1, see dup_table.
SCENARIOS = {
    # The first row violates the primary key at once; 159 MB of rows are still to be written.
    "first_row": (list(range(1, ROWS + 1)), False),
    # The same, but the server spends 0.3 s on that row first: the client's stream fills
    # every buffer on the way and waits when the error comes.
    "backpressured": ([-1, *range(2, ROWS + 1)], False),
    # Eight rows go in and come back eightfold (64 MB of results while the client is still
    # writing), then a duplicate: a relay that stopped reading the server while its write
    # buffer towards the server is full would deadlock here.
    "after_results": ([*range(2, 10), 1, *range(10, ROWS + 1)], True),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_error_reaches_streaming_client_mid_pipeline(
    target: Target, dup_table: str, scenario: str
) -> None:
    ids, returning = SCENARIOS[scenario]
    dup = next(i for i in ids if i in (1, -1))
    messages = _insert_pipeline(dup_table, ids, returning)
    # The error can only come once the duplicate row is in; well before the client has
    # written half of what follows it, it must be there (a relay that holds it until the
    # Sync delivers it after the whole pipeline).
    sizes = [len(m) for m in messages()]
    through_dup = sum(sizes[: ids.index(dup) + 2])
    bound = through_dup + (sum(sizes) - through_dup) // 2
    with target.raw(timeout=30, extra={"application_name": dup_table}) as conn:
        got = stream_pipeline(conn, messages)
        assert got.sqlstate == "23505", got
        # ParseComplete, a BindComplete (and the rows) for each row before the duplicate,
        # the duplicate's BindComplete, its error, and the Sync's ReadyForQuery.
        assert got.replies == "1" + ("2DC" if returning else "2C") * ids.index(dup) + "2EZ", got
        assert 0 < got.sent_at_error < bound, (
            f"the error arrived after {got.sent_at_error} of {got.total} bytes"
            f" (the duplicate row ends at {through_dup}; bound {bound})"
        )
        assert got.sent < got.total, got
        # The session goes on: nothing of the pipeline ran.
        after = conn.simple(f"select count(*) from {dup_table}")
        assert [m.row() for m in after if m.type == "D"] == [["2"]]
    if target.proxy is not None:
        failed = wait_events(target.proxy, 1, "query", application_name=dup_table, sqlstate="23505")
        assert len(failed) == 1 and failed[0]["rows"] is None, failed


def _rows_counted(ids: Iterable[int], taken: list[int]) -> Iterator[tuple[int, str]]:
    """The rows of a batch, counting in ``taken`` how many the driver has asked for: a
    driver that streams the batch asks for the next row only when it is about to send it."""
    payload = "x" * ROW
    for i in ids:
        taken[0] += 1
        yield i, payload


def _psycopg_batch(target: Target, table: str, mode: str, taken: list[int]) -> str | None:
    import psycopg

    sql = f"insert into {table} values (%s, %s)"
    rows = _rows_counted(range(1, ROWS + 1), taken)
    with target.connect(application_name=table) as conn:
        try:
            if mode == "executemany":  # psycopg sends it as a pipeline (libpq 14+)
                conn.cursor().executemany(sql, rows)
            else:
                with conn.pipeline():
                    cur = conn.cursor()
                    for row in rows:
                        cur.execute(sql, row)
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


def _asyncpg_batch(target: Target, table: str, taken: list[int]) -> str | None:
    import asyncio

    import asyncpg

    async def run() -> str | None:
        conn = await asyncpg.connect(
            target.dsn(), timeout=10, server_settings={"application_name": table}
        )
        try:
            await conn.executemany(
                f"insert into {table} values ($1, $2)", _rows_counted(range(1, ROWS + 1), taken)
            )
        except asyncpg.PostgresError as exc:
            return str(exc.sqlstate)
        finally:
            await conn.close()
        return None

    return asyncio.run(asyncio.wait_for(run(), 60))


@pytest.mark.parametrize("driver", ["psycopg-executemany", "psycopg-pipeline", "asyncpg"])
def test_driver_batch_stops_at_first_row_error(target: Target, dup_table: str, driver: str) -> None:
    """A real driver's batch of 1 MB rows whose first row is a duplicate: it reads while it
    sends, raises the server's error and never asks for most of the batch. (Directly these
    drivers take 4-8 of the 160 rows, through pgwarden about 10-25.)"""
    taken = [0]
    if driver == "asyncpg":
        sqlstate = _asyncpg_batch(target, dup_table, taken)
    else:
        sqlstate = _psycopg_batch(target, dup_table, driver.split("-")[1], taken)
    assert sqlstate == "23505"
    assert 0 < taken[0] < ROWS // 2, f"{driver} took {taken[0]} of {ROWS} rows before the error"
    with target.connect() as conn:  # nothing of the batch ran
        assert conn.execute(f"select count(*) from {dup_table}").fetchone() == (2,)
