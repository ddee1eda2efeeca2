"""md5 and cleartext checks against the secrets PostgreSQL itself made for the suite's roles
(alice: SCRAM, bob: md5 with password_encryption=md5), and the auth_query lookup's sharing
of one answer between concurrent logins."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from proxy.auth import password as pw
from proxy.auth.authquery import AuthQuery, AuthQueryError, AuthQuerySettings
from proxy.auth.scram import ScramSecret
from proxy.errors import AuthenticationError
from tests.support.pgcluster import PASSWORDS, PgServer


def _secret(pg: PgServer, role: str) -> pw.Verifier:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        return pw.parse_verifier(row.fetchone()[0])  # type: ignore[index]


def test_cleartext_and_md5_against_the_servers_secrets(pg: PgServer) -> None:
    alice, bob = _secret(pg, "alice"), _secret(pg, "bob")
    assert isinstance(alice, ScramSecret) and isinstance(bob, pw.Md5Secret)
    assert bob == pw.make_md5(PASSWORDS["bob"], "bob")  # the server's md5 is ours
    for user, verifier in (("alice", alice), ("bob", bob)):
        assert pw.verify_cleartext(PASSWORDS[user], user, verifier, 4096)
        assert not pw.verify_cleartext(PASSWORDS[user] + "x", user, verifier, 4096)
    assert not pw.verify_cleartext(PASSWORDS["bob"], "bobby", bob, 4096)  # md5 is salted by name
    assert not pw.verify_cleartext("anything", "nobody", None, 4096)
    salt = b"\x00\xff\x10\x20"
    answer = pw.md5_password(PASSWORDS["bob"], "bob", salt).encode() + b"\x00"
    pw.check_md5(answer, "bob", bob, salt)
    with pytest.raises(AuthenticationError, match='failed for user "bob"'):
        pw.check_md5(answer, "bob", bob, b"\x00\xff\x10\x21")  # another challenge
    with pytest.raises(AuthenticationError, match='failed for user "bob"'):
        pw.check_cleartext(b"\xff\xfe\x00", "bob", bob)  # not UTF-8: matches nothing


def test_verifier_forms() -> None:
    assert str(pw.parse_verifier("md5" + "0" * 32)) == "md5" + "0" * 32
    for bad in ("md5" + "0" * 31, "md5" + "G" * 32, "plain", ""):
        with pytest.raises(ValueError):
            pw.parse_verifier(bad)


def _query(connect: Any) -> AuthQuery:
    settings = AuthQuerySettings("SELECT 1", "lookup", "", 60.0, 5.0)
    return AuthQuery(settings, connect, lambda database, user: "pw")


def test_concurrent_lookups_share_one_and_its_failure() -> None:
    calls: list[str] = []

    async def main() -> None:
        query = _query(None)
        gate = asyncio.Event()

        async def ask(database: str, user: str) -> pw.Verifier | None:
            calls.append(user)
            await gate.wait()
            raise AuthQueryError("the server is down")

        query._ask = ask  # type: ignore[method-assign]
        first = asyncio.ensure_future(query.lookup("app", "alice"))
        second = asyncio.ensure_future(query.lookup("app", "alice"))
        await asyncio.sleep(0)
        gate.set()
        for task in (first, second):
            with pytest.raises(AuthQueryError, match="the server is down"):
                await task
        assert calls == ["alice"]
        # a failure is not cached; an abandoned lookup fails the logins sharing it, without
        # cancelling them
        gate.clear()
        third = asyncio.ensure_future(query.lookup("app", "alice"))
        fourth = asyncio.ensure_future(query.lookup("app", "alice"))
        await asyncio.sleep(0)
        third.cancel()
        with pytest.raises(AuthQueryError, match="abandoned"):
            await fourth
        assert calls == ["alice", "alice"]

    asyncio.run(main())


def test_answers_found_or_not_are_cached() -> None:
    calls: list[str] = []

    async def main() -> None:
        query = _query(None)

        async def ask(database: str, user: str) -> pw.Verifier | None:
            calls.append(user)
            return pw.make_md5("x", user) if user == "alice" else None

        query._ask = ask  # type: ignore[method-assign]
        for _ in range(3):
            assert await query.lookup("app", "alice") == pw.make_md5("x", "alice")
            assert await query.lookup("app", "nobody") is None
        assert await query.lookup("other", "nobody") is None  # another database
        assert calls == ["alice", "nobody", "nobody"]
        query.forget()  # a reload
        assert await query.lookup("app", "alice") == pw.make_md5("x", "alice")
        assert calls == ["alice", "nobody", "nobody", "alice"]

    asyncio.run(main())
