"""``pgwarden serve --workers 2``: a real supervisor and two worker processes on one port.

Sessions spread over both workers and show in one ``/sessions``; a cancel that lands on the
other worker cancels the right statement; unknown keys are dropped once; reload and shutdown
reach both; ``verify`` and ``logs`` read both trails; a killed worker comes back; and
``--workers 1`` keeps the single-process layout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import admin, sleep_until_cancelled, unique, wait_until
from tests.e2e.test_cancel import _running
from tests.support import rawpg
from tests.support.proxyproc import REPO_ROOT, ProxyFactory, ProxyProcess, read_events

pytestmark = pytest.mark.e2e


def _start(proxy_factory: ProxyFactory, *args: str, workers: int = 2) -> ProxyProcess:
    proxy = proxy_factory("--workers", str(workers), *args)
    if workers > 1:
        wait_until(lambda: f"all {workers} workers ready" in proxy.stderr_text(), 30, "the workers")
    return proxy


def _http(proxy: ProxyProcess, path: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(
        proxy.admin_url(path), method=method, headers=proxy.admin_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    text = body.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _sessions(proxy: ProxyProcess, apps: set[str]) -> list[dict[str, Any]]:
    status, items = _http(proxy, "/sessions")
    assert status == 200, items
    return [s for s in items if s["application_name"] in apps]


def _trail(proxy: ProxyProcess, worker: int) -> list[dict[str, Any]]:
    directory = proxy.audit_dir if worker == 0 else proxy.audit_dir / f"worker-{worker}"
    return read_events(directory) if directory.exists() else []


def _metric(proxy: ProxyProcess, name: str) -> dict[str, float]:
    """``name``'s value per worker label from the one /metrics page."""
    with urllib.request.urlopen(proxy.admin_url("/metrics"), timeout=15) as response:
        page = response.read().decode()
    out: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            worker = dict(part.split("=", 1) for part in labels.split(","))["worker"]
            out[worker.strip('"')] = float(value)
    return out


def _pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGWARDEN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _worker_pids(proxy: ProxyProcess) -> list[int]:
    """The worker pids, from the supervisor's process tree."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proxy.pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def test_sessions_spread_over_both_workers(proxy_factory: ProxyFactory, pg: Any) -> None:
    proxy = _start(proxy_factory)
    apps = {unique("spread") for _ in range(24)}
    conns = [psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps]
    try:
        for conn in conns:
            assert conn.execute("select 1").fetchone() == (1,)
        items = _sessions(proxy, apps)
        assert {s["application_name"] for s in items} == apps
        by_worker = {w: [s for s in items if s["worker"] == w] for w in (0, 1)}
        # 24 connections hashed over two sockets: all on one has probability 2**-23.
        assert by_worker[0] and by_worker[1], {w: len(s) for w, s in by_worker.items()}
        with admin(pg) as conn:
            rows = conn.execute(
                "select pid, application_name from pg_stat_activity"
                " where application_name = any(%s)",
                (list(apps),),
            ).fetchall()
        assert {(s["backend_pid"], s["application_name"]) for s in items} == set(rows)
        # Each worker recorded exactly its own sessions, in its own trail.
        for worker, mine in by_worker.items():
            started = {
                e["session_id"] for e in _trail(proxy, worker) if e["type"] == "session_start"
            }
            assert {s["session_id"] for s in mine} <= started
            assert not {s["session_id"] for s in by_worker[1 - worker]} & started
        assert sum(_metric(proxy, "pgwarden_client_connections").values()) >= len(apps)
    finally:
        for conn in conns:
            conn.close()


def test_cancel_reaches_the_session_in_the_other_worker(
    proxy_factory: ProxyFactory, pg: Any
) -> None:
    proxy = _start(proxy_factory)
    crossed = 0
    for _attempt in range(12):
        app = unique("victim")
        bystander_app = unique("bystander")
        with (
            psycopg.connect(proxy.dsn(), application_name=app, autocommit=True) as victim,
            psycopg.connect(proxy.dsn(), application_name=bystander_app) as bystander,
            ThreadPoolExecutor(2) as pool,
        ):
            owner = _sessions(proxy, {app})[0]

            result = pool.submit(sleep_until_cancelled, victim)
            other = pool.submit(
                lambda c=bystander: c.execute("select pg_sleep(0.3), 'still here'").fetchone()
            )
            wait_until(lambda a=app: _running(pg, a), 5, "the victim's pg_sleep")
            started = time.monotonic()
            victim.cancel()
            assert result.result(timeout=5) == "57014"
            assert time.monotonic() - started < 3
            assert other.result(timeout=5) == ("", "still here")

        # The worker that received the CancelRequest audits it, naming the target session.
        def cancel_event(sid: str = owner["session_id"]) -> tuple[int, dict[str, Any]] | None:
            for worker in (0, 1):
                for event in _trail(proxy, worker):
                    if event["type"] == "cancel" and event.get("target_session") == sid:
                        return worker, event
            return None

        receiver, event = wait_until(cancel_event, 5, "the cancel's audit event")
        assert event["outcome"] == "forwarded", event
        if receiver != owner["worker"]:
            crossed += 1
            if crossed >= 2:
                break
    assert crossed >= 2, "no cancel landed on the other worker in 12 tries (2**-12 by chance)"
    assert sum(_metric(proxy, "pgwarden_cancels_forwarded_total").values()) >= 2


def test_unknown_cancel_key_dropped_once(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    with rawpg.RawConn(proxy.host, proxy.port) as sock:
        sock.send(rawpg.cancel_request(0x7FFFFFF0, b"\x01\x02\x03\x04"))
        assert sock.wait_closed(5) == b""

    def dropped() -> list[dict[str, Any]]:
        return [
            e
            for w in (0, 1)
            for e in _trail(proxy, w)
            if e["type"] == "cancel" and e["outcome"] == "unknown_key"
        ]

    wait_until(dropped, 5, "the dropped cancel's event")
    time.sleep(0.5)  # a second (wrong) record from the sibling would be written by now
    assert len(dropped()) == 1
    assert sum(_metric(proxy, "pgwarden_cancels_dropped_total").values()) == 1
    assert sum(_metric(proxy, "pgwarden_cancels_forwarded_total").values()) == 0


def test_terminate_through_worker_zero(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    apps = {unique("term") for _ in range(12)}
    conns = {a: psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps}
    try:
        items = _sessions(proxy, apps)
        remote = [s for s in items if s["worker"] != 0]
        assert remote, "no session on worker 1 among 12 (2**-12 by chance)"
        target = remote[0]
        status, body = _http(proxy, f"/sessions/{target['session_id']}/terminate", "POST")
        assert status == 200 and body["terminated"] is True, body
        with pytest.raises(psycopg.OperationalError):
            conns[target["application_name"]].execute("select 1")
        assert target["session_id"] not in {s["session_id"] for s in _sessions(proxy, apps)}
        status, _ = _http(proxy, "/sessions/0123456789abcdef/terminate", "POST")
        assert status == 404
    finally:
        for conn in conns.values():
            conn.close()


def test_reload_reaches_both_workers(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    proxy.reload()  # SIGHUP to the supervisor
    wait_until(lambda: proxy.stderr_text().count("policy reloaded") == 2, 10, "two reloads")
    status, body = _http(proxy, "/reload", "POST")
    assert status == 200 and body["ok"] is True, body
    assert proxy.stderr_text().count("policy reloaded") == 4
    assert _metric(proxy, "pgwarden_policy_reloads_total") == {"0": 2.0, "1": 2.0}


def test_sigterm_drains_both_workers(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory, "--shutdown-grace", "20s")
    apps = [unique("drain") for _ in range(10)]
    conns = [psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps]
    workers = {s["application_name"]: s["worker"] for s in _sessions(proxy, set(apps))}
    assert set(workers.values()) == {0, 1}, workers
    results: dict[str, Any] = {}

    def run(conn: psycopg.Connection[Any], app: str) -> None:
        try:
            results[app] = conn.execute("select pg_sleep(1.0), 'finished'").fetchone()
        except psycopg.Error as exc:
            results[app] = exc

    threads = [threading.Thread(target=run, args=(c, a)) for c, a in zip(conns, apps, strict=True)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the statements are running (they take 1 s)
    assert proxy.stop(timeout=30) == 0
    for thread in threads:
        thread.join(5)
    assert results == {a: ("", "finished") for a in apps}
    for conn in conns:
        conn.close()
    for worker in (0, 1):
        events = _trail(proxy, worker)
        mine = {a for a, w in workers.items() if w == worker}
        done = {
            e["application_name"]
            for e in events
            if e["type"] == "query" and "pg_sleep" in e.get("statement", "")
        }
        ended = {e["application_name"] for e in events if e["type"] == "session_end"}
        assert mine <= done and mine <= ended, (worker, mine, done, ended)
    assert "pgwarden stopped (2 workers)" in proxy.stderr_text()


def test_verify_and_logs_read_both_trails(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    apps = {unique("trails") for _ in range(16)}
    for app in apps:
        with psycopg.connect(proxy.dsn(), application_name=app, autocommit=True) as conn:
            conn.execute(f"select '{app}'")
    proxy.stop()
    assert (proxy.audit_dir / "audit.id").read_text() != (
        proxy.audit_dir / "worker-1" / "audit.id"
    ).read_text()
    verified = _pgwarden("verify", str(proxy.audit_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("worker 0 (") and "ok:" in lines[0], lines
    assert lines[1].startswith("worker 1 (") and "ok:" in lines[1], lines
    logs = _pgwarden("logs", str(proxy.audit_dir), "--format", "json", "--type", "query")
    assert logs.returncode == 0, logs.stderr
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    shown = {e["application_name"] for e in events if e["application_name"] in apps}
    assert shown == apps
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps), "the two trails are merged by time"
    trail_ids = {e["trail_id"] for w in (0, 1) for e in _trail(proxy, w) if "trail_id" in e}
    assert len(trail_ids) == 2
    # A record edited in worker 1's trail fails verify, naming that trail.
    current = proxy.audit_dir / "worker-1" / "audit.jsonl"
    text = current.read_text()
    app = next(a for a in apps if a in text)
    current.write_text(text.replace(app, app[:-1] + "X", 1))
    damaged = _pgwarden("verify", str(proxy.audit_dir))
    assert damaged.returncode == 1
    assert "worker 0 (" in damaged.stdout and "worker 1 (" in damaged.stdout
    assert any(
        line.startswith("worker 1 (") and "FAILED" in line for line in damaged.stdout.splitlines()
    ), damaged.stdout


def test_a_killed_worker_is_started_again(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    before = _worker_pids(proxy)
    assert len(before) == 2, before
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: "exited with signal SIGKILL" in proxy.stderr_text(), 10, "the log line")
    wait_until(lambda: len(set(_worker_pids(proxy)) - set(before)) == 1, 15, "a new worker")
    wait_until(lambda: proxy.stderr_text().count(" of 2 ready") == 3, 30, "it to be ready")
    apps = {unique("after") for _ in range(16)}
    conns = [psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps]
    try:
        assert {s["worker"] for s in _sessions(proxy, apps)} == {0, 1}
    finally:
        for conn in conns:
            conn.close()
    assert proxy.returncode is None


def test_one_worker_keeps_the_single_process_layout(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory, workers=1)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
    status, items = _http(proxy, "/sessions")
    assert status == 200 and all("worker" not in s for s in items)
    assert proxy.stop() == 0
    assert not [p for p in proxy.audit_dir.iterdir() if p.name.startswith("worker-")]
    assert "workers" not in proxy.stderr_text()
    assert any(e["type"] == "query" for e in _trail(proxy, 0))


def test_worker_start_failure_is_a_start_failure(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proxy = ProxyProcess(
        proxy_factory.pg, tmp_path / "p", ("--workers", "2", "--audit-dir", str(blocker))
    )
    with pytest.raises(AssertionError, match="exited with 2"):
        proxy.start()


REVIEW_POLICY = """\
version: 1
groups:
  dba: [bob]
defaults: {action: allow, on_unparsable: block}
rules:
  - id: review-deletes
    when: {commands: [DELETE]}
    action: review
    review: {approvers: {groups: [dba]}, timeout: 30s}
"""


def test_a_review_held_in_worker_one_is_approved_through_worker_zero(
    proxy_factory: ProxyFactory, pg: Any, tmp_path: Path
) -> None:
    from proxy.approvals.people import token_hash
    from tests.e2e.kit import scratch_table

    token = "pgw_bob-token-0123456789abcdef"
    people = tmp_path / "approvers.yaml"
    people.write_text(
        f"version: 1\npeople:\n  - name: bob\n    token_sha256: {token_hash(token)}\n"
    )
    (tmp_path / "bob.token").write_text(token)
    policy = tmp_path / "policy.yaml"
    policy.write_text(REVIEW_POLICY)
    proxy = proxy_factory(
        "--workers", "2", "--approvals-approvers-file", str(people), policies=[policy]
    )
    wait_until(lambda: "all 2 workers ready" in proxy.stderr_text(), 30, "the workers")
    apps = {unique("held") for _ in range(12)}
    conns = {a: psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps}
    with scratch_table(pg, "held", 3) as table, ThreadPoolExecutor(1) as pool:
        try:
            remote = [s for s in _sessions(proxy, apps) if s["worker"] == 1]
            assert remote, "no session on worker 1 among 12 (2**-12 by chance)"
            conn = conns[remote[0]["application_name"]]
            deleted = pool.submit(lambda: conn.execute(f"delete from {table}").rowcount)
            held = wait_until(
                lambda: [e for e in _trail(proxy, 1) if e["type"] == "review_requested"],
                15,
                "the review request in worker 1's trail",
            )
            request_id = held[0]["request_id"]
            status, listed = _http(proxy, "/approvals?state=pending")
            assert status == 200 and [r["id"] for r in listed] == [request_id], listed
            voted = _pgwarden(
                "approvals", "approve", request_id, "--admin-url", proxy.admin_url(""),
                "--token-file", str(tmp_path / "bob.token"),
            )  # fmt: skip
            assert voted.returncode == 0, voted.stdout + voted.stderr
            assert deleted.result(timeout=10) == 3
            decided = [e for e in _trail(proxy, 1) if e["type"] == "review_decided"]
            assert [(e["request_id"], e["approver"], e["state"]) for e in decided] == [
                (request_id, "bob", "approved")
            ], decided
            # Worker 0's admin API recorded who voted.
            votes = [e for e in _trail(proxy, 0) if e.get("action") == "approve"]
            assert [(e["caller"], e["request_id"], e["result"]) for e in votes] == [
                ("bob", request_id, "ok")
            ], votes
            assert not [e for e in _trail(proxy, 0) if e["type"].startswith("review_")]
            status, shown = _http(proxy, f"/approvals/{request_id}")
            assert status == 200 and shown["state"] == "approved", shown
        finally:
            for c in conns.values():
                c.close()


def test_the_store_gets_every_worker_trail_without_a_naming_conflict(
    proxy_factory: ProxyFactory, store_server: Any
) -> None:
    import asyncio

    from tests.test_store_e2e import _drop_store_tables, poll, store_rows

    dsn = store_server.dsn(database="postgres")
    asyncio.run(_drop_store_tables(dsn))
    sinks = json.dumps([{"type": "postgres", "dsn": dsn, "batch_size": 10}])
    proxy = _start(proxy_factory, "--audit-sinks", sinks)
    apps = {unique("stored") for _ in range(16)}
    conns = [psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps]
    for conn in conns:
        conn.execute("select 1")
    assert {s["worker"] for s in _sessions(proxy, apps)} == {0, 1}
    for conn in conns:
        conn.close()
    ids = {
        w: (proxy.audit_dir / ("" if w == 0 else f"worker-{w}") / "audit.id").read_text().strip()
        for w in (0, 1)
    }

    def caught_up() -> bool:
        counts = {t: len(e) for t, e in (store_rows(dsn, "trail_id") or {}).items()}
        return counts == {ids[w]: len(_trail(proxy, w)) for w in (0, 1)}

    poll(caught_up)
    rows = store_rows(dsn, "trail_id") or {}
    for worker in (0, 1):
        assert rows[ids[worker]] == _trail(proxy, worker)
    status, ready = _http(proxy, "/readyz")
    assert status == 200 and "warnings" not in ready, ready
    assert ready["checks"]["worker 1 audit_trail"] and ready["checks"]["worker 1 store"], ready
    assert "is also shipped by another trail" not in proxy.stderr_text()


def test_alert_thresholds_count_every_worker(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    from tests.test_store_e2e import RULES  # failing-selects: 3 in a minute, by user

    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES)
    proxy = _start(proxy_factory, "--alerts", str(rules))
    apps = {unique("alerting") for _ in range(12)}
    conns = {a: psycopg.connect(proxy.dsn(), application_name=a, autocommit=True) for a in apps}
    try:
        by_worker: dict[int, list[str]] = {0: [], 1: []}
        for item in _sessions(proxy, apps):
            by_worker[item["worker"]].append(item["application_name"])
        assert by_worker[0] and by_worker[1], by_worker
        # Two failures in worker 0, one in worker 1: neither alone reaches the three.
        for app in by_worker[0][:1] * 2 + by_worker[1][:1]:
            with pytest.raises(psycopg.errors.DivisionByZero):
                conns[app].execute("select 1/0")
        fired = wait_until(
            lambda: [e for e in _trail(proxy, 0) if e["type"] == "alert"], 10, "the alert"
        )
        assert [e["alert"] for e in fired] == ["failing-selects"], fired
        assert not [e for e in _trail(proxy, 1) if e["type"] == "alert"]
    finally:
        for conn in conns.values():
            conn.close()


def test_workers_stop_when_the_supervisor_is_killed(proxy_factory: ProxyFactory) -> None:
    proxy = _start(proxy_factory)
    workers = _worker_pids(proxy)
    assert len(workers) == 2
    proxy.kill()  # SIGKILL: no chance to forward anything

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(") ", 1)[1].startswith("Z")  # a zombie of init's
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in workers), 30, "the orphaned workers to stop")


def test_a_second_proxy_on_the_same_address_does_not_join_it(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    first = _start(proxy_factory)
    second = ProxyProcess(
        proxy_factory.pg,
        tmp_path / "second",
        ("--workers", "2", "--listen", f"{first.host}:{first.port}"),
    )
    with pytest.raises(AssertionError, match="exited with 2"):
        second.start()
    assert "address already in use" in second.stderr_text().lower()
    assert not (second.audit_dir / "audit.jsonl").exists()  # it never opened a trail
    assert first.returncode is None


def test_failed_logins_count_over_every_worker(proxy_factory: ProxyFactory) -> None:
    """Ten wrong passwords throttle the address whichever workers saw them, as in one
    process (tests/tls/test_proxy_auth.py): no N-fold allowance with N workers."""
    proxy = _start(proxy_factory)
    wrong = proxy.dsn("alice", "app", "wrong") + "?sslmode=disable"
    for _ in range(10):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=10).close()
    # Which worker saw each (both, but for a 2**-9 chance; then this passes without sharing).
    failures = [w for w in (0, 1) for e in _trail(proxy, w) if e["type"] == "auth_failure"]
    for _ in range(4):  # whichever worker the next connections land on
        with pytest.raises(psycopg.OperationalError, match="too many failed logins from this"):
            psycopg.connect(proxy.dsn("alice", "app", "alice-pw"), connect_timeout=10).close()
    assert len(failures) == 10, failures
