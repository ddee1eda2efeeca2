"""The secret corpus through a real proxy: every form of tests/secret_forms.py is sent by a real
client, and then every output pgwarden has is searched for it -- the audit files, the
diagnostics, `pgwarden logs` (text and JSON), `report` (text, JSON, HTML), `policy replay`, the
central store and the admin API's live sessions. Plus the two forms that only exist at run
time: a bind parameter echoed in the server's error (with audit.parameters: none) and an
unterminated PASSWORD literal quoted in pgwarden's own parse error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import psycopg
import pytest

from proxy import cli
from tests.e2e.kit import unique
from tests.secret_forms import FORMS, PREPARE, text_of
from tests.support.proxyproc import ProxyProcess
from tests.test_store import count_rows, store_dsn, wait_until

pytestmark = pytest.mark.e2e
__all__ = ["store_dsn"]  # the fixture, re-used

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
BOUND = "ZqBoundParamSx"
ADMIN = "ZqAdminViewSx"


def _run(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None) -> None:
    # Most of these fail on the server (no such role, server, extension): still recorded.
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql, params)


def _admin_sessions_during(proxy: ProxyProcess, sql: str) -> str:
    """The admin API's /sessions while ``sql`` runs (it must take a while)."""
    done = threading.Event()

    def run() -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                _run(conn, sql)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    seen = ""
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not done.is_set():
            request = urllib.request.Request(
                proxy.admin_url("/sessions"), headers=proxy.admin_headers()
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read().decode()
            if "pg_sleep" in body:
                seen = body
                break
            time.sleep(0.05)  # polling interval
    finally:
        worker.join()
    assert seen, "the long statement never showed in /sessions"
    return seen


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert code in (0, 1), (argv, code, captured.err)
    return captured.out + captured.err


async def _store_text(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT statement, event::text AS event FROM audit_events")
    finally:
        await conn.close()
    return "\n".join(f"{r['statement']}\t{r['event']}" for r in rows)


def test_no_form_reaches_any_output(
    proxy_factory: Any, store_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sinks = json.dumps([{"type": "postgres", "dsn": store_dsn, "batch_size": 20}])
    proxy = proxy_factory(
        *("--audit-sinks", sinks, "--audit-parameters", "none", "--log-level", "debug"),
        policies=[DEFAULT_POLICY],
    )
    n = unique("sec")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for form in FORMS:
            if form.needs_facts:
                _run(conn, PREPARE.replace("{n}", n))
            _run(conn, text_of(form, n))
        # A bind parameter the server echoes in its error; audit.parameters is none.
        _run(conn, "SELECT %s::int", (BOUND,))
    sessions = _admin_sessions_during(
        proxy, f"SELECT pg_sleep(1.5), set_config('app.api_key', '{ADMIN}', false)"
    )
    statements = len(FORMS) + 1
    proxy.wait_for(lambda e: e.get("type") == "query", count=statements)
    asyncio.run(
        wait_until(lambda: count_rows(store_dsn), within=30)  # type: ignore[arg-type]
    )
    proxy.stop()

    audit = Path(proxy.audit_dir)
    EMPTY = tmp_path / "allow-all.yaml"  # replay under another policy: every block changes
    EMPTY.write_text("version: 1\nrules: []\n")
    outputs: dict[str, str] = {
        "audit files": b"".join(p.read_bytes() for p in audit.rglob("*") if p.is_file()).decode(
            "utf-8", "replace"
        ),
        "diagnostics": proxy.stderr_text(),
        "admin /sessions": sessions,
        "logs table": _cli(capsys, "logs", str(audit), "--format", "table"),
        "logs json": _cli(capsys, "logs", str(audit), "--format", "json"),
        "logs csv": _cli(capsys, "logs", str(audit), "--format", "csv"),
        "report": _cli(capsys, "report", str(audit)),
        "report json": _cli(capsys, "report", str(audit), "--format", "json"),
        "policy replay": _cli(capsys, "policy", "replay", str(audit), "--policy", str(EMPTY)),
        "policy replay json": _cli(
            capsys, "policy", "replay", str(audit), "--policy", str(EMPTY), "--format", "json"
        ),
        "store": asyncio.run(_store_text(store_dsn)),
    }
    html = tmp_path / "report.html"
    _cli(capsys, "report", str(audit), "--format", "html", "-o", str(html))
    outputs["report html"] = html.read_text()

    assert "set_config" in outputs["admin /sessions"]
    assert "sslpassword" in outputs["audit files"] and "pgp_sym_encrypt" in outputs["audit files"]
    assert "invalid input syntax for type integer" in outputs["audit files"]
    assert "unterminated quoted string" in outputs["audit files"]

    leaks = []
    for form in FORMS:
        for name, text in outputs.items():
            if form.secret in text:
                leaks.append(f"{form.id} -> {name}")
    for secret, what in ((BOUND, "bound parameter"), (ADMIN, "admin view")):
        leaks += [f"{what} -> {name}" for name, text in outputs.items() if secret in text]
    assert not leaks, "secrets reached outputs:\n" + "\n".join(leaks)
