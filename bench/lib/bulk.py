"""Bulk transfers through a target with psql: COPY out, COPY in, and a wide SELECT.

These stress the byte pump rather than per-statement costs: one statement moves about a hundred
megabytes of CopyData or DataRow messages.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lib import procstat
from lib.services import Target

COPY_IN_TABLE = "bench_copy_in"


class BulkFailed(Exception):
    """psql exited with an error during a bulk test."""


@dataclass(frozen=True, slots=True)
class BulkRun:
    seconds: float
    proxy_cpu_seconds: float | None


def _psql(target: Target, database: str, sql: str) -> list[str]:
    return [
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        target.host,
        "-p",
        str(target.port),
        "-U",
        "postgres",
        "-d",
        database,
        "-c",
        sql,
    ]


def psql(target: Target, database: str, sql: str) -> str:
    result = subprocess.run(_psql(target, database, sql), capture_output=True, text=True)
    if result.returncode != 0:
        raise BulkFailed(f"psql {sql!r} failed: {result.stderr.strip()}")
    return result.stdout


def _timed(
    target: Target, database: str, sql: str, stdin: Path | None, stdout: Path | None
) -> BulkRun:
    before = procstat.usage(target.pid).cpu_seconds if target.pid else None
    with (
        stdin.open("rb") if stdin else open("/dev/null", "rb") as src,
        stdout.open("wb") if stdout else open("/dev/null", "wb") as dst,
    ):
        started = time.perf_counter()
        result = subprocess.run(
            _psql(target, database, sql), stdin=src, stdout=dst, stderr=subprocess.PIPE
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BulkFailed(f"psql {sql!r} failed: {result.stderr.decode(errors='replace')}")
    cpu = None
    if target.pid and before is not None:
        cpu = procstat.usage(target.pid).cpu_seconds - before
    return BulkRun(seconds, cpu)


def prepare(direct: Target, database: str, rows: int, data_file: Path) -> None:
    """Write ``rows`` rows of pgbench_accounts to ``data_file`` and create the COPY-in table.

    The table is UNLOGGED so that WAL writing, identical for every target, does not drown the
    proxy's share of the time.
    """
    psql(
        direct,
        database,
        f"DROP TABLE IF EXISTS {COPY_IN_TABLE}; "
        f"CREATE UNLOGGED TABLE {COPY_IN_TABLE} (LIKE pgbench_accounts)",
    )
    _timed(
        direct,
        database,
        f"COPY (SELECT * FROM pgbench_accounts LIMIT {rows}) TO STDOUT",
        None,
        data_file,
    )


def copy_out(target: Target, database: str, rows: int) -> BulkRun:
    sql = f"COPY (SELECT * FROM pgbench_accounts LIMIT {rows}) TO STDOUT"
    return _timed(target, database, sql, None, None)


def copy_in(target: Target, database: str, data_file: Path, rows: int) -> BulkRun:
    psql(target, database, f"TRUNCATE {COPY_IN_TABLE}")
    result = _timed(target, database, f"COPY {COPY_IN_TABLE} FROM STDIN", data_file, None)
    # A proxy that dropped CopyData would look fast; count what actually arrived.
    loaded = int(psql(target, database, f"SELECT count(*) FROM {COPY_IN_TABLE}").strip())
    if loaded != rows:
        raise BulkFailed(f"COPY FROM STDIN loaded {loaded} rows, expected {rows}")
    return result


def wide_select(target: Target, database: str, rows: int) -> BulkRun:
    sql = f"SELECT * FROM pgbench_accounts LIMIT {rows}"
    return _timed(target, database, sql, None, None)
