"""Authentication relayed through the proxy: trust, cleartext, md5, SCRAM; failures audited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.kit import Target, unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e

USERS = [
    ("postgres", None),
    ("dave", None),
    ("carol", "carol-pw"),
    ("bob", "bob-pw"),
    ("alice", "alice-pw"),
]


@pytest.mark.parametrize(("user", "password"), USERS, ids=[u for u, _ in USERS])
def test_login_each_method(target: Target, user: str, password: str | None) -> None:
    """asyncpg does trust, cleartext, md5 and SCRAM itself; psycopg goes through libpq."""
    app = unique(f"auth_{user}")

    async def check() -> str:
        conn = await asyncpg.connect(
            target.dsn(user, "app", password), server_settings={"application_name": app}, timeout=5
        )
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    assert asyncio.run(check()) == user
    with target.connect(user, "app", password) as conn:
        assert conn.execute("select session_user").fetchone() == (user,)
    if target.proxy is not None:
        start = wait_events(target.proxy, 1, "session_start", application_name=app)[0]
        assert (start["user"], start["database"]) == (user, "app"), start


@pytest.mark.parametrize("user", ["carol", "bob"])
def test_raw_wrong_password(target: Target, user: str) -> None:
    """The client sees Postgres's own 28P01 for cleartext and md5 failures, then a close."""
    with target.raw(login=False) as conn:
        with pytest.raises(AssertionError, match="28P01"):
            conn.login(user, "app", password_text=f"nope-{user}-{unique('pw')}")
        conn.wait_closed(5)


def test_wrong_password_audited_without_secret(target: Target) -> None:
    secret = unique("WrongSecret")

    async def attempt() -> None:
        await asyncpg.connect(target.dsn("alice", "app", secret), timeout=5)

    with pytest.raises(asyncpg.InvalidPasswordError) as err:
        asyncio.run(attempt())
    assert err.value.sqlstate == "28P01"
    if target.proxy is None:
        return
    proxy = target.proxy
    failures = wait_events(proxy, 1, "auth_failure", user="alice")
    assert failures[-1]["sqlstate"] == "28P01", failures[-1]
    assert failures[-1]["database"] == "app"
    with target.raw(login=False) as conn:  # a successful cleartext login must not leak either
        conn.login("carol", "app", password_text="carol-pw")
    for path in Path(proxy.audit_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, f"wrong password leaked into {path}"
            assert b"carol-pw" not in data, f"cleartext password leaked into {path}"
    assert secret not in proxy.stderr_text(), "wrong password leaked into the proxy's log"


def test_md5_and_scram_messages_unchanged(target: Target) -> None:
    """Auth requests reach the client as Postgres sent them (md5 salt; SCRAM without -PLUS)."""
    with target.raw(login=False) as conn:
        conn.send(rawpg.startup({"user": "alice", "database": "app"}))
        msg = conn.recv()
        assert msg.type == "R" and msg.auth_code() == 10, msg
        mechs = [m for m in msg.body[4:].split(b"\x00") if m]
        assert mechs == [b"SCRAM-SHA-256"], mechs
    with target.raw(login=False) as conn:
        conn.send(rawpg.startup({"user": "bob", "database": "app"}))
        msg = conn.recv()
        assert msg.type == "R" and msg.auth_code() == 5 and len(msg.body) == 8, msg
