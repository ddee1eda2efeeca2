"""Client drivers for the driver matrix: each runs a named scenario and reports what it saw.

One scenario, one result ``dict``, the same shape for every driver: the test compares it with
what PostgreSQL itself gives. psycopg2, psycopg 3 and asyncpg run in this process; pgjdbc runs
``tests/drivers/java/DriverScenario.java`` (compiled once per test run) and node-postgres runs
``tests/drivers/node/scenario.js`` with the ``pg`` package that ``npm ci`` put in
``tests/drivers/node/node_modules``. psql runs in a pseudo-terminal, so it prompts.

A missing runtime skips its tests with the reason, except under ``PGWARDEN_REQUIRE_DRIVERS=1``
(set by ``.ci/run``), where it fails them: CI must not skip silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import Target, unique, wait_until

DRIVERS_DIR = Path(__file__).resolve().parents[1] / "drivers"
NODE_DIR = DRIVERS_DIR / "node"
JAVA_SOURCE = DRIVERS_DIR / "java" / "DriverScenario.java"
JDBC_JARS = (Path("/usr/share/java/postgresql.jar"),)  # Debian's libpostgresql-jdbc-java
REQUIRE_ENV = "PGWARDEN_REQUIRE_DRIVERS"
RUN_TIMEOUT = 60.0

Result = dict[str, Any]


def missing(reason: str) -> None:
    """Skip (or, in CI, fail) a test whose client runtime is not installed."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and ${REQUIRE_ENV}=1: .ci/run installs every driver)")
    pytest.skip(reason)


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` has input within ``timeout`` seconds (poll: select() stops at fd 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _running_sql(app: str) -> str:
    return (
        "select count(*) from pg_stat_activity where application_name = "
        f"'{app}' and state = 'active' and query like 'select pg_sleep%'"
    )


def _await_running(count: Callable[[], int]) -> None:
    wait_until(lambda: count() > 0, 5, "the statement to cancel to start")


# --- psycopg2 --------------------------------------------------------------------------


def _psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError:
        missing("psycopg2 is not installed (pip install -e '.[test]')")
    return psycopg2


def run_psycopg2(scenario: str, target: Target, app: str) -> Result:
    psycopg2 = _psycopg2()
    conn = psycopg2.connect(target.dsn(application_name=app), connect_timeout=5)
    conn.autocommit = True
    try:
        return _PSYCOPG2[scenario](psycopg2, conn, target, app)
    finally:
        conn.close()


def _pg2_one(conn: Any, sql: str, args: tuple[Any, ...] | None = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _pg2_pid(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    return {
        "driver_pid": conn.get_backend_pid(),
        "server_pid": _pg2_one(conn, "select pg_backend_pid()"),
    }


def _pg2_prepared(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    # psycopg2 has no protocol-level prepare; its users PREPARE/EXECUTE in SQL.
    with conn.cursor() as cur:
        cur.execute("prepare double_it(int) as select $1 * 2")
        values = []
        for i in (1, 2, 3):
            cur.execute("execute double_it(%s)", (i,))
            values.append(cur.fetchone()[0])
    prepared = _pg2_one(conn, "select count(*)::int from pg_prepared_statements where from_sql")
    return {"values": values, "server_prepared": prepared}


def _pg2_batch(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    with conn.cursor() as cur:
        cur.execute("create temp table batch_t(id int primary key, v text)")
        cur.executemany("insert into batch_t values (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        count = cur.rowcount
    rows = _pg2_one(conn, "select string_agg(id || v, ',' order by id) from batch_t")
    return {"rowcount": count, "rows": rows}


def _pg2_transaction(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    with conn.cursor() as cur:
        cur.execute("create temp table tx_t(id int primary key)")
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("insert into tx_t values (1)")
        cur.execute("savepoint s")
        try:
            cur.execute("insert into tx_t values (1)")
            duplicate = "no error"
        except psycopg2.Error as exc:
            duplicate = exc.pgcode
        cur.execute("rollback to savepoint s")
        cur.execute("insert into tx_t values (2)")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("insert into tx_t values (3)")
    conn.rollback()
    conn.autocommit = True
    rows = _pg2_one(conn, "select string_agg(id::text, ',' order by id) from tx_t")
    return {"duplicate": duplicate, "rows": rows}


def _pg2_notify(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    channel = f"chan_{app}"
    with conn.cursor() as cur:
        cur.execute(f"listen {channel}")
        cur.execute(f"notify {channel}, 'hello'")
    deadline = time.monotonic() + 5
    while not conn.notifies and time.monotonic() < deadline:
        readable(conn.fileno(), 0.1)
        conn.poll()
    seen = [
        {
            "channel": "<ours>" if n.channel == channel else n.channel,
            "payload": n.payload,
            "pid": n.pid,
        }
        for n in conn.notifies
    ]
    return {
        "notifications": seen,
        "driver_pid": conn.get_backend_pid(),
        "server_pid": _pg2_one(conn, "select pg_backend_pid()"),
    }


def _pg2_cancel_common(
    psycopg2: Any, conn: Any, target: Target, app: str, first_sql: str, next_sql: str
) -> Result:
    outcome: dict[str, str] = {}

    def first() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(first_sql)
            outcome["first"] = "ok"
        except psycopg2.Error as exc:
            outcome["first"] = exc.pgcode

    watcher = psycopg2.connect(target.dsn(), connect_timeout=5)
    watcher.autocommit = True
    try:
        thread = threading.Thread(target=first)
        thread.start()
        _await_running(lambda: int(_pg2_one(watcher, _running_sql(app))))
        started = time.monotonic()
        conn.cancel()  # PQcancel: returns once the server has closed the cancel socket
        thread.join(RUN_TIMEOUT)
        seconds = time.monotonic() - started
    finally:
        watcher.close()
    try:
        with conn.cursor() as cur:
            cur.execute(next_sql)
            nxt = cur.fetchone()[1]
    except psycopg2.Error as exc:
        nxt = exc.pgcode
    return {"first": outcome.get("first"), "seconds": seconds, "next": nxt}


def _pg2_cancel(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    return _pg2_cancel_common(
        psycopg2, conn, target, app, "select pg_sleep(30)", "select 1, 'next'"
    )


def _pg2_cancel_then_next(psycopg2: Any, conn: Any, target: Target, app: str) -> Result:
    result = _pg2_cancel_common(
        psycopg2, conn, target, app, "select pg_sleep(0.3)", "select pg_sleep(1.5), 'next'"
    )
    del result["seconds"]
    return result


_PSYCOPG2: dict[str, Callable[[Any, Any, Target, str], Result]] = {
    "pid": _pg2_pid,
    "prepared": _pg2_prepared,
    "batch": _pg2_batch,
    "transaction": _pg2_transaction,
    "notify": _pg2_notify,
    "cancel": _pg2_cancel,
    "cancel_then_next": _pg2_cancel_then_next,
}


# --- pgjdbc ----------------------------------------------------------------------------

_java_classes: dict[str, Path] = {}
_java_lock = threading.Lock()


def _jdbc_jar() -> Path:
    for jar in JDBC_JARS:
        if jar.exists():
            return jar
    missing("pgjdbc is not installed (apt-get install libpostgresql-jdbc-java)")
    raise AssertionError("unreachable")


def _java_program(workdir: Path) -> tuple[str, Path]:
    """``(java, classes_dir)``, compiling DriverScenario.java on first use."""
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None or javac is None:
        missing("no JDK (java and javac) on PATH (apt-get install default-jdk-headless)")
    assert java is not None and javac is not None
    jar = _jdbc_jar()
    with _java_lock:
        if "classes" not in _java_classes:
            classes = workdir / "java-classes"
            classes.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [javac, "-d", str(classes), "-cp", str(jar), str(JAVA_SOURCE)],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            assert done.returncode == 0, f"javac failed:\n{done.stderr}"
            _java_classes["classes"] = classes
    return java, _java_classes["classes"]


def jdbc_url(target: Target) -> str:
    url = f"jdbc:postgresql://{target.host}:{target.port}/postgres?user=postgres"
    if target.superuser_password:
        url += f"&password={target.superuser_password}"
    return url


def run_pgjdbc(scenario: str, target: Target, app: str, workdir: Path) -> Result:
    return run_pgjdbc_url(scenario, jdbc_url(target), app, workdir)


def run_pgjdbc_url(scenario: str, url: str, app: str, workdir: Path) -> Result:
    """The scenario with pgjdbc connecting to ``url`` (a full jdbc:postgresql:// URL)."""
    java, classes = _java_program(workdir)
    cp = os.pathsep.join([str(classes), str(_jdbc_jar())])
    # C1 only and class data sharing: the JVM starts in a fraction of a second.
    argv = [java, "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-cp", cp, "DriverScenario"]
    return _run_json([*argv, scenario, url, app], "pgjdbc")


def pgjdbc_version() -> tuple[int, ...]:
    """The installed pgjdbc's version, from its jar's manifest."""
    import zipfile

    with zipfile.ZipFile(_jdbc_jar()) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
    for line in manifest.splitlines():
        if line.startswith(("Bundle-Version:", "Implementation-Version:")):
            text = line.split(":", 1)[1].strip()
            return tuple(int(p) for p in re.findall(r"\d+", text)[:3])
    raise AssertionError(f"no version in the pgjdbc manifest:\n{manifest}")


# --- node-postgres ---------------------------------------------------------------------


def run_node_postgres(scenario: str, target: Target, app: str) -> Result:
    config = {
        "host": target.host,
        "port": target.port,
        "user": "postgres",
        "database": "postgres",
        "password": target.superuser_password,
        "application_name": app,
    }
    return run_node_config(scenario, config)


def run_node_config(scenario: str, config: dict[str, Any]) -> Result:
    """The scenario with node-postgres given ``config`` (pg.Client's options, as JSON)."""
    node = shutil.which("node")
    if node is None:
        missing("Node.js is not installed (apt-get install nodejs npm)")
    assert node is not None
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").exists():
        missing(f"node-postgres is not installed: run `npm ci` in {NODE_DIR}")
    return _run_json([node, str(NODE_DIR / "scenario.js"), scenario, json.dumps(config)], "node")


def _run_json(argv: list[str], what: str) -> Result:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"{what} scenario failed ({done.returncode}):\n{done.stderr}"
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- psycopg 3, asyncpg, psql: backend pid and cancel-then-next only -------------------


def run_psycopg3(scenario: str, target: Target, app: str) -> Result:
    with target.connect(application_name=app) as conn:
        if scenario == "pid":
            row = conn.execute("select pg_backend_pid()").fetchone()
            assert row is not None
            return {"driver_pid": conn.info.backend_pid, "server_pid": row[0]}
        assert scenario == "cancel_then_next", scenario
        outcome: dict[str, str | None] = {}

        def first() -> None:
            try:
                conn.execute("select pg_sleep(0.3)")
                outcome["first"] = "ok"
            except psycopg.Error as exc:
                outcome["first"] = exc.sqlstate

        with target.connect() as watcher:

            def count() -> int:
                row = watcher.execute(_running_sql(app)).fetchone()
                return int(row[0]) if row else 0

            thread = threading.Thread(target=first)
            thread.start()
            _await_running(count)
            conn.cancel_safe(timeout=10)  # returns once the server closed the cancel socket
            thread.join(RUN_TIMEOUT)
        try:
            row = conn.execute("select pg_sleep(1.5), 'next'").fetchone()
            nxt = row[1] if row else None
        except psycopg.Error as exc:
            nxt = exc.sqlstate
        return {"first": outcome.get("first"), "next": nxt}


def run_asyncpg(scenario: str, target: Target, app: str) -> Result:
    async def run() -> Result:
        conn = await asyncpg.connect(
            target.dsn(), timeout=5, server_settings={"application_name": app}
        )
        try:
            if scenario == "pid":
                return {
                    "driver_pid": conn.get_server_pid(),
                    "server_pid": await conn.fetchval("select pg_backend_pid()"),
                }
            assert scenario == "cancel_then_next", scenario
            # Cancelling the awaiting task makes asyncpg send a CancelRequest (as a timeout
            # does), and its next statement waits until that cancel connection is closed.
            task = asyncio.ensure_future(conn.fetch("select pg_sleep(0.3)"))
            watcher = await asyncpg.connect(target.dsn(), timeout=5)
            try:
                deadline = time.monotonic() + 5
                while not await watcher.fetchval(_running_sql(app)):
                    assert time.monotonic() < deadline, "the statement to cancel never started"
                    await asyncio.sleep(0.01)  # polling interval
            finally:
                await watcher.close()
            task.cancel()
            try:
                await task
                first = "ok"
            except asyncio.CancelledError:
                first = "task cancelled"
            try:
                nxt = (await conn.fetchrow("select pg_sleep(1.5), 'next'"))[1]
            except asyncpg.PostgresError as exc:
                nxt = exc.sqlstate
            return {"first": first, "next": nxt}
        finally:
            await asyncio.wait_for(conn.close(), 5)

    return asyncio.run(run())


_PROMPT = re.compile(rb"pid=(\d+)> ")


class _Tty:
    """psql on a pseudo-terminal: it believes a person types, so it prompts (``%p``)."""

    def __init__(self, target: Target, app: str) -> None:
        psql = shutil.which("psql")
        if psql is None:
            missing("psql is not installed")
        assert psql is not None
        self.master, slave = pty.openpty()
        env = {**os.environ, "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "5", "TERM": "dumb"}
        self.proc = subprocess.Popen(
            [psql, "-X", "-P", "pager=off", "-v", "PROMPT1=pid=%p> ", "-d", target.dsn()],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(
        self, pattern: re.Pattern[bytes], timeout: float = 10.0
    ) -> tuple[bytes, re.Match[bytes]]:
        """Read until ``pattern`` shows; return what came before it, and the match."""
        deadline = time.monotonic() + timeout
        while (found := pattern.search(self.seen)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"psql never printed {pattern.pattern!r}: {self.seen!r}")
            if readable(self.master, left):
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # EIO: psql exited
                    raise AssertionError(f"psql exited: {self.seen!r}") from None
        before, self.seen = self.seen[: found.start()], self.seen[found.end() :]
        return before, found

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def _psql_outcome(output: bytes) -> str:
    # The marker is built by the server ('ne' || 'xt'), so psql's echo of the typed line
    # cannot fake it.
    if b"canceling statement due to user request" in output:
        return "57014"
    if b"(1 row)" in output:
        return "ok"
    if b"Cancel request sent" in output and b"ERROR" not in output:
        return "result not shown"  # psql drops the output of a statement it tried to cancel
    return output.decode(errors="replace")


def run_psql(scenario: str, target: Target, app: str) -> Result:
    tty = _Tty(target, app)
    try:
        driver_pid = int(tty.expect(_PROMPT)[1].group(1))
        if scenario == "pid":
            tty.send("select 'server:' || pg_backend_pid();")
            server_pid = int(tty.expect(re.compile(rb"server:(\d+)"))[1].group(1))
            return {"driver_pid": driver_pid, "server_pid": server_pid}
        assert scenario == "cancel_then_next", scenario
        with target.connect() as watcher:
            tty.send("select pg_sleep(0.3);")

            def count() -> int:
                row = watcher.execute(_running_sql(app)).fetchone()
                return int(row[0]) if row else 0

            _await_running(count)
            # Ctrl-C: psql's handler calls PQcancel, which waits for the server's close.
            tty.proc.send_signal(signal.SIGINT)
        first = _psql_outcome(tty.expect(_PROMPT)[0])
        tty.send("select pg_sleep(1.5), 'ne' || 'xt' as answer;")
        output = tty.expect(_PROMPT)[0]
        nxt = "next" if b"next" in output.split(b"answer", 1)[-1] else _psql_outcome(output)
        return {"first": first, "next": nxt}
    finally:
        tty.close()


def app_name(driver: str, scenario: str) -> str:
    return unique(f"{driver.replace('-', '')}_{scenario}")
