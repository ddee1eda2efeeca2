"""The admin API on a real aiohttp server (loopback, free port) over a fake session registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from proxy import config
from proxy.admin.app import AdminServer
from proxy.audit.trail import AuditTrail
from proxy.errors import ConfigError
from proxy.identity import Identity
from proxy.state import ReloadResult, ServerState

TOKEN = "s3cret-token-0123456789"


class FakeSession:
    """A live session as the admin API sees it (the session itself is tested elsewhere)."""

    def __init__(self, session_id: str, user: str, statement: str | None = None) -> None:
        self.session_id = session_id
        self.identity = Identity(user, "app", "psql", "127.0.0.1", 50000, session_id)
        self.started_at = time.time() - 60
        self.statement = statement
        self.cancels = 0
        self.terminated: str | None = None

    @property
    def state(self) -> str:
        return "active" if self.statement else "idle"

    @property
    def current_statement(self) -> str | None:
        return self.statement

    @property
    def statement_started(self) -> float | None:
        return time.time() - 2.5 if self.statement else None

    @property
    def backend_pid(self) -> int | None:
        return 4321

    async def cancel(self) -> bool:
        self.cancels += 1
        return self.statement is not None

    def terminate(self, reason: str) -> None:
        self.terminated = reason


class FakeShipper:
    def __init__(self) -> None:
        self.healthy = True
        self.backlog = 7
        self.stats = {"shipped": 40.0, "batches": 2.0, "errors": 1.0, "ship_seconds": 0.25}
        self.conflicts: tuple[str, ...] = ()


def make_state() -> ServerState:
    state = ServerState(proxy_id="test-proxy", started_at=time.time())
    for session in (FakeSession("s-1", "alice", "SELECT pg_sleep(10)"), FakeSession("s-2", "bob")):
        state.sessions[session.session_id] = session
    reload_results = [ReloadResult(True, (), ("policies/a.yaml",)),
                      ReloadResult(False, ("a.yaml:3:5: unknown key",), ())]  # fmt: skip

    async def reload() -> ReloadResult:
        return reload_results.pop(0)

    upstream = {"ok": True}

    async def upstream_ok() -> bool:
        return upstream["ok"]

    state.reload = reload
    state.upstream_ok = upstream_ok
    state.extra["upstream"] = upstream
    return state


@asynccontextmanager
async def admin(
    tmp_path: Path, token: str | None = TOKEN, shipper: FakeShipper | None = None
) -> AsyncIterator[tuple[AdminServer, aiohttp.ClientSession, str]]:
    token_file = ""
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        token_file = str(tmp_path / "token")
    cfg = config.defaults().replace(
        admin__listen="127.0.0.1:0", admin__token_file=token_file, audit__dir=str(tmp_path / "a")
    )
    trail = AuditTrail(cfg, "test-proxy")
    trail.open()
    server = AdminServer(cfg, make_state(), trail, shipper)
    await server.start()
    try:
        async with aiohttp.ClientSession() as client:
            yield server, client, f"http://127.0.0.1:{server.port}"
    finally:
        await server.aclose()
        await trail.aclose()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_readiness_and_metrics_are_open_everything_else_needs_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (_server, client, base):
            async with client.get(f"{base}/healthz") as r:
                assert (r.status, await r.text()) == (200, "ok\n")
            async with client.get(f"{base}/metrics") as r:
                assert r.status == 200 and "pgwarden_client_connections 2.0" in await r.text()
            async with client.get(f"{base}/readyz") as r:  # a readiness probe sends no token
                assert r.status in (200, 503) and "checks" in await r.text()
            with caplog.at_level(logging.WARNING, logger="pgwarden.admin"):
                for path, headers in (
                    ("/sessions", {}),
                    ("/sessions", auth("wrong-token-but-long-enough")),
                    ("/sessions", {"Authorization": TOKEN}),
                ):
                    async with client.get(base + path, headers=headers) as r:
                        assert r.status == 401
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                for method in ("cancel", "terminate"):
                    async with client.post(f"{base}/sessions/s-1/{method}") as r:
                        assert r.status == 401
                async with client.post(f"{base}/reload") as r:
                    assert r.status == 401
            async with client.get(f"{base}/sessions", headers=auth()) as r:
                assert r.status == 200
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 6
        assert (
            "auth_failed GET /sessions from 127.0.0.1: missing Authorization header" in messages[0]
        )
        assert "wrong token" in messages[1]
        assert "not a Bearer token" in messages[2]
        assert not any(TOKEN in m or "wrong-token" in m for m in messages)

    asyncio.run(main())


def test_sessions_cancel_and_terminate(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (server, client, base):
            async with client.get(f"{base}/sessions", headers=auth()) as r:
                sessions = await r.json()
            assert [s["session_id"] for s in sessions] == ["s-1", "s-2"]
            first = sessions[0]
            assert first["user"] == "alice" and first["state"] == "active"
            assert first["current_statement"] == "SELECT pg_sleep(10)"
            assert 2.0 <= first["statement_age_seconds"] < 10
            assert first["backend_pid"] == 4321 and first["client_addr"] == "127.0.0.1"
            assert first["started_at"].endswith("Z") and first["database"] == "app"
            assert sessions[1]["statement_age_seconds"] is None

            async with client.post(f"{base}/sessions/s-1/cancel", headers=auth()) as r:
                assert await r.json() == {"session_id": "s-1", "cancelled": True}
            async with client.post(f"{base}/sessions/s-2/cancel", headers=auth()) as r:
                assert await r.json() == {"session_id": "s-2", "cancelled": False}
            async with client.post(f"{base}/sessions/s-2/terminate", headers=auth()) as r:
                assert await r.json() == {"session_id": "s-2", "terminated": True}
            async with client.post(f"{base}/sessions/nope/terminate", headers=auth()) as r:
                assert r.status == 404
            s1, s2 = server.state.sessions["s-1"], server.state.sessions["s-2"]
            assert isinstance(s1, FakeSession) and isinstance(s2, FakeSession)
            assert (s1.cancels, s2.cancels) == (1, 1)
            assert s1.terminated is None and "administrator" in (s2.terminated or "")

    asyncio.run(main())


def test_reload_reports_success_and_invalid_policies(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (_server, client, base):
            async with client.post(f"{base}/reload", headers=auth()) as r:
                assert r.status == 200
                assert await r.json() == {
                    "ok": True, "errors": [], "policy_files": ["policies/a.yaml"]
                }  # fmt: skip
            async with client.post(f"{base}/reload", headers=auth()) as r:
                assert r.status == 422
                body = await r.json()
                assert body["ok"] is False and body["errors"] == ["a.yaml:3:5: unknown key"]

    asyncio.run(main())


def test_readyz_names_the_failing_check(tmp_path: Path) -> None:
    async def main() -> None:
        shipper = FakeShipper()
        async with admin(tmp_path, shipper=shipper) as (server, client, base):
            async with client.get(f"{base}/readyz", headers=auth()) as r:
                assert r.status == 200
                assert (await r.json())["checks"] == {
                    "upstream": True, "audit_trail": True, "store": True
                }  # fmt: skip
            server.state.extra["upstream"]["ok"] = False
            shipper.healthy = False
            async with client.get(f"{base}/readyz", headers=auth()) as r:
                assert r.status == 503
                assert (await r.json())["failed"] == ["upstream", "store"]
            async with client.get(f"{base}/metrics") as r:
                text = await r.text()
            assert "pgwarden_store_backlog_events 7.0" in text
            assert "pgwarden_store_healthy 0.0" in text
            assert "pgwarden_store_shipped_events_total 40.0" in text

    asyncio.run(main())


def test_readyz_warns_about_identity_conflicts_without_failing(tmp_path: Path) -> None:
    async def main() -> None:
        shipper = FakeShipper()
        shipper.conflicts = ("proxy_id 'vm' is also shipped by another trail",)
        shipper.stats["identity_conflicts"] = 1.0
        async with admin(tmp_path, shipper=shipper) as (_server, client, base):
            async with client.get(f"{base}/readyz") as r:
                body = await r.json()
                assert r.status == 200 and body["ready"] is True
                assert body["warnings"] == list(shipper.conflicts)
            async with client.get(f"{base}/metrics") as r:
                assert "pgwarden_store_identity_conflicts 1.0" in await r.text()

    asyncio.run(main())


def test_without_a_token_file_a_token_is_generated_and_kept(tmp_path: Path) -> None:
    generated = tmp_path / "a" / "admin.token"

    async def main() -> str:
        async with admin(tmp_path, token=None) as (server, client, base):
            assert server.token_path == str(generated)
            async with client.get(f"{base}/sessions") as r:
                assert r.status == 401  # no open admin API, even on loopback
            token = generated.read_text().strip()
            async with client.get(f"{base}/sessions", headers=auth(token)) as r:
                assert r.status == 200
        return token

    first = asyncio.run(main())
    assert len(first) >= 32 and oct(generated.stat().st_mode & 0o777) == "0o600"
    assert asyncio.run(main()) == first  # the next start keeps it
    base = config.defaults().replace(audit__dir=str(tmp_path / "a"))
    trail = AuditTrail(base, "p")
    for listen in ("0.0.0.0:9187", "10.1.2.3:9187", ":9187"):
        with pytest.raises(ConfigError, match=r"needs admin\.token_file"):
            AdminServer(base.replace(admin__listen=listen), make_state(), trail, None)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        AdminServer(
            base.replace(admin__listen="0.0.0.0:0", admin__token_file=str(tmp_path / "short")),
            make_state(), trail, None,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="cannot read admin token"):
        AdminServer(
            base.replace(admin__listen="[::1]:0", admin__token_file=str(tmp_path / "missing")),
            make_state(), trail, None,
        )  # fmt: skip
    off = AdminServer(base.replace(admin__listen=""), make_state(), trail, None)
    assert not off.enabled

    async def start_off() -> None:
        await off.start()
        await off.aclose()

    asyncio.run(start_off())
