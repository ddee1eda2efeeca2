"""What one benchmark run measured, and the per-cell summaries the report prints."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from lib.pgbench import PgbenchRun


@dataclass(frozen=True, slots=True)
class Sample:
    """One pgbench run against one target in one cell (mode x clients), in one round."""

    target: str
    mode: str
    clients: int
    round: int
    run: PgbenchRun | None
    error: str | None = None
    proxy_cpu_seconds: float | None = None
    proxy_rss_kb: int | None = None
    audit_bytes: int | None = None
    # PostgreSQL's whole process tree (postmaster, backends, background workers)
    server_cpu_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class CellSummary:
    """Means over the rounds of one target in one cell."""

    target: str
    mode: str
    clients: int
    runs: int
    errors: int
    tps: float | None
    p50_us: float | None
    p99_us: float | None
    proxy_cpu_seconds: float | None
    proxy_cpu_us_per_tx: float | None
    proxy_rss_kb: int | None
    audit_bytes_per_tx: float | None
    server_cpu_us_per_tx: float | None = None

    @property
    def total_cpu_us_per_tx(self) -> float | None:
        """Proxy and PostgreSQL together (direct: PostgreSQL alone)."""
        if self.server_cpu_us_per_tx is None:
            return None
        return self.server_cpu_us_per_tx + (self.proxy_cpu_us_per_tx or 0.0)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(samples: list[Sample], target: str, mode: str, clients: int) -> CellSummary:
    mine = [s for s in samples if (s.target, s.mode, s.clients) == (target, mode, clients)]
    ok = [s for s in mine if s.run is not None]
    runs = [s.run for s in ok if s.run is not None]
    cpu = [s.proxy_cpu_seconds for s in ok if s.proxy_cpu_seconds is not None]
    txns = sum(r.transactions for r in runs)
    audit = [s.audit_bytes for s in ok if s.audit_bytes is not None]
    rss = [s.proxy_rss_kb for s in ok if s.proxy_rss_kb is not None]
    server = [s.server_cpu_seconds for s in ok if s.server_cpu_seconds is not None]
    return CellSummary(
        target=target,
        mode=mode,
        clients=clients,
        runs=len(ok),
        errors=len(mine) - len(ok),
        tps=_mean([r.tps for r in runs]),
        p50_us=_mean([r.p50_us for r in runs]),
        p99_us=_mean([r.p99_us for r in runs]),
        proxy_cpu_seconds=_mean(cpu),
        proxy_cpu_us_per_tx=sum(cpu) / txns * 1e6 if cpu and txns else None,
        proxy_rss_kb=max(rss) if rss else None,
        audit_bytes_per_tx=sum(audit) / txns if audit and txns else None,
        server_cpu_us_per_tx=sum(server) / txns * 1e6 if server and txns else None,
    )


@dataclass(frozen=True, slots=True)
class BulkSample:
    test: str
    target: str
    round: int
    seconds: float | None
    proxy_cpu_seconds: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class IdleResult:
    """Resident memory of a freshly started proxy before, with and after idle clients."""

    target: str
    connections: int
    rss_fresh_kb: int
    rss_baseline_kb: int
    rss_loaded_kb: int
    rss_after_close_kb: int
    backends: int  # PostgreSQL client backends while the idle clients were connected
    error: str | None = None

    @property
    def per_connection_kb(self) -> float:
        return (self.rss_loaded_kb - self.rss_baseline_kb) / self.connections


@dataclass(slots=True)
class Results:
    """Everything one invocation measured (mutable while the run goes on)."""

    samples: list[Sample] = field(default_factory=list)
    bulk: list[BulkSample] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
