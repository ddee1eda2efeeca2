"""What a client can see of its connection is the server's, not pgwarden's (issue 8 §2).

Each scenario runs directly against PostgreSQL and through the proxy (``target``) with the
same expectations: backend identity, NOTIFY self-detection, pg_terminate_backend, cancel
semantics and startup errors.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import Target, admin, unique, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def test_backend_pid_is_the_servers(target: Target) -> None:
    with target.connect() as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        assert conn.info.backend_pid == row[0]


def test_raw_backend_key_names_the_real_backend(target: Target) -> None:
    with target.raw() as conn:
        pid, secret = conn.key
        rows = [m for m in conn.simple("select pg_backend_pid()") if m.type == "D"]
        assert rows[0].row() == [str(pid)]
        assert len(secret) == 4  # protocol 3.0


def test_own_notify_is_recognised_by_pid(target: Target) -> None:
    channel = unique("selfnote")
    with target.connect() as conn:
        conn.execute(f"listen {channel}")
        conn.execute(f"notify {channel}, 'hello'")
        notes = list(conn.notifies(timeout=2, stop_after=1))
        assert [n.payload for n in notes] == ["hello"]
        assert notes[0].pid == conn.info.backend_pid


def test_pg_terminate_backend_by_driver_pid(target: Target, pg: Any) -> None:
    victim = target.connect()
    try:
        victim.execute("select 1")
        with admin(pg) as other:
            row = other.execute(
                "select pg_terminate_backend(%s)", (victim.info.backend_pid,)
            ).fetchone()
            assert row == (True,)
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("select 1")
        assert "terminat" in str(info.value).lower() or "closed" in str(info.value).lower()
    finally:
        victim.close()


def test_server_fatal_reaches_an_idle_raw_client(target: Target, pg: Any) -> None:
    with target.raw() as conn:
        pid, _ = conn.key
        with admin(pg) as other:
            other.execute("select pg_terminate_backend(%s)", (pid,))
        msgs, closed = conn.drain(timeout=5)
        errors = [m for m in msgs if m.type == "E"]
        assert closed
        assert [e.fields().get("C") for e in errors] == ["57P01"]
        assert errors[0].fields().get("S") == "FATAL"


def test_server_fatal_in_a_transaction(target: Target, pg: Any) -> None:
    with target.raw() as conn:
        pid, _ = conn.key
        conn.simple("begin")
        with admin(pg) as other:
            other.execute("select pg_terminate_backend(%s)", (pid,))
        msgs, closed = conn.drain(timeout=5)
        assert closed
        assert [m.fields().get("C") for m in msgs if m.type == "E"] == ["57P01"]


def _cancel_sleep_then_run(conn: psycopg.Connection[Any]) -> None:
    started = threading.Event()
    errors: list[BaseException] = []

    def sleeper() -> None:
        started.set()
        try:
            conn.execute("select pg_sleep(5)")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    started.wait()
    with admin_conn_for(conn) as watcher:
        wait_until(
            lambda: watcher.execute(
                "select 1 from pg_stat_activity where pid = %s and state = 'active'",
                (conn.info.backend_pid,),
            ).fetchone(),
            what="the sleep to start",
        )
    conn.cancel_safe(timeout=5)
    thread.join(10)
    assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled)


def admin_conn_for(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    info = conn.info
    return psycopg.connect(
        host=info.host, port=info.port, user="postgres", dbname="postgres", autocommit=True
    )


def test_cancel_is_done_before_the_client_is_told(target: Target) -> None:
    """A driver that cancels and at once runs its next statement must not see that next
    statement cancelled: the cancel has acted by the time the cancel socket closes."""
    with target.connect() as conn:
        for _ in range(3):
            _cancel_sleep_then_run(conn)
            # The very next statement right after the cancel returned.
            row = conn.execute("select pg_sleep(0.2), 42").fetchone()
            assert row is not None and row[1] == 42


def test_cancel_with_a_wrong_key_does_nothing(target: Target) -> None:
    with target.connect() as conn:
        pid = conn.info.backend_pid
        result: list[Any] = []
        thread = threading.Thread(
            target=lambda: result.append(conn.execute("select pg_sleep(0.5), 1").fetchone())
        )
        thread.start()
        time.sleep(0.1)
        with rawpg.RawConn(target.host, target.port) as raw:
            raw.send(rawpg.cancel_request(pid, b"\x00\x00\x00\x00"))
            assert raw.wait_closed() == b""
        thread.join(5)
        assert result and result[0][1] == 1


def test_invalid_startup_length_closes_silently(target: Target) -> None:
    with rawpg.RawConn(target.host, target.port) as raw:
        raw.send(b"X\x00\x00\x00\x04")
        assert raw.wait_closed() == b""


def test_connect_then_leave_without_a_word(target: Target) -> None:
    with rawpg.RawConn(target.host, target.port) as raw:
        raw.sock.shutdown(1)
        assert raw.wait_closed() == b""


def test_duplicate_startup_user_last_wins(target: Target) -> None:
    """PostgreSQL reads the last of duplicate startup keys; so must the audit trail."""
    app = unique("dupuser")
    with rawpg.RawConn(target.host, target.port) as raw:
        raw.send(
            rawpg.startup_pairs(
                [
                    ("user", "postgres"),
                    ("database", "postgres"),
                    ("user", "dave"),
                    ("application_name", app),
                ]
            )
        )
        raw.finish_login()
        rows = [m.row() for m in raw.simple("select session_user, current_user") if m.type == "D"]
        assert rows == [["dave", "dave"]]
    if target.proxy is not None:
        from tests.e2e.kit import wait_events

        start = wait_events(target.proxy, 1, "session_start", application_name=app)[0]
        assert start["user"] == "dave"


def test_startup_role_option_is_recorded(target: Target, pg: Any) -> None:
    app = unique("roleopt")
    with target.raw(
        user="postgres", extra={"options": "-c role=dave", "application_name": app}
    ) as raw:
        rows = [m.row() for m in raw.simple("select session_user, current_user") if m.type == "D"]
        assert rows == [["postgres", "dave"]]
    if target.proxy is not None:
        from tests.e2e.kit import wait_events

        start = wait_events(target.proxy, 1, "session_start", application_name=app)[0]
        assert start.get("role") == "dave"


@pytest.fixture(scope="module")
def long_role(pg: Any) -> str:
    name = "l" * 63
    with admin(pg) as conn:
        conn.execute(f'drop role if exists "{name}"')
        conn.execute(f"create role \"{name}\" login password 'long-pw'")
    return name


def test_long_user_name_is_truncated_like_postgres(target: Target, long_role: str) -> None:
    """PostgreSQL cuts user names to 63 bytes; pgwarden's identity is the name it uses."""
    app = unique("longname")
    given = long_role + "xyz"
    with target.connect(user=given, password="long-pw", application_name=app) as conn:
        row = conn.execute("select session_user").fetchone()
        assert row == (long_role,)
    if target.proxy is not None:
        from tests.e2e.kit import wait_events

        start = wait_events(target.proxy, 1, "session_start", application_name=app)[0]
        assert start["user"] == long_role
