"""Run ``pgbench -S`` once against a target and read TPS and latency percentiles.

Percentiles come from pgbench's per-transaction logs (``--log``), whose third column is the
transaction's latency in microseconds; pgbench's own summary only gives a mean.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lib.services import Target

_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


class PgbenchFailed(Exception):
    """pgbench exited with an error; the message carries its output."""


@dataclass(frozen=True, slots=True)
class PgbenchRun:
    tps: float
    transactions: int
    failed: int
    p50_us: float
    p99_us: float


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``fraction`` in 0..1)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def _latencies(log_dir: Path) -> list[int]:
    values: list[int] = []
    for path in log_dir.iterdir():
        with path.open("rb") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3:
                    values.append(int(fields[2]))
    values.sort()
    return values


def client_args(target: Target, database: str) -> list[str]:
    return ["-h", target.host, "-p", str(target.port), "-U", "postgres", database]


def run(
    target: Target,
    database: str,
    mode: str,
    clients: int,
    duration: float,
    scratch: Path,
    *,
    connect_each: bool = False,
) -> PgbenchRun:
    """One timed select-only run; raises :class:`PgbenchFailed` if pgbench reports an error.
    ``connect_each``: a new connection for every transaction (``-C``, the handshake cost)."""
    threads = min(clients, 2)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="pgbench-log-") as tmp:
        log_dir = Path(tmp)
        cmd = [
            "pgbench",
            "-S",
            "-n",
            "-M",
            mode,
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(max(1, round(duration))),
            *(["-C"] if connect_each else []),
            "--log",
            f"--log-prefix={log_dir / 'tx'}",
            *client_args(target, database),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=log_dir)
        if result.returncode != 0:
            raise PgbenchFailed(
                f"{' '.join(cmd)} exited with {result.returncode}:\n"
                f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
        latencies = _latencies(log_dir)
    tps = _TPS.search(result.stdout)
    txns = _TXNS.search(result.stdout)
    failed = _FAILED.search(result.stdout)
    if tps is None or txns is None:
        raise PgbenchFailed(f"cannot read pgbench output:\n{result.stdout}\n{result.stderr}")
    return PgbenchRun(
        tps=float(tps.group(1)),
        transactions=int(txns.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        p50_us=percentile(latencies, 0.50),
        p99_us=percentile(latencies, 0.99),
    )
