"""Plain-text tables and target checks for a finished benchmark run.

Target checks are printed as MET / MISSED / NOT MEASURED; they never fail the run, because a
benchmark on a shared machine is evidence to read, not a test to pass.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable

from lib.results import BulkSample, CellSummary, IdleResult, Results, summarize

PGWARDEN = "pgwarden"
POLICY = "pgwarden-policy"
STORE = "pgwarden-store"
PGBOUNCER = "pgbouncer"
DIRECT = "direct"

# The targets of issue 14 §1 (docs/benchmarks.md explains them), all in the same run.
MAX_CPU_VS_PGBOUNCER = 3.0  # proxy CPU µs/tx at 8 clients, simple and extended
MIN_TPS_VS_PGBOUNCER = 0.6  # 8 clients, simple and extended
STRETCH_TPS_VS_PGBOUNCER = 0.7
MAX_ADDED_P50_US = {"simple": 40.0, "extended": 35.0, "prepared": 35.0}  # at 1 client
MAX_BULK_VS_PGBOUNCER = 1.05  # COPY and wide SELECT "at PgBouncer's speed": within 5 %
MIN_POLICY_VS_PLAIN = 0.95  # policies cost <= 5 % (8 clients, simple)
MIN_STORE_VS_PLAIN = 0.90  # the store sink costs <= 10 % (8 clients, simple)
CHECKED_MODES = ("simple", "extended")  # the CPU and TPS targets
MAX_BASELINE_RSS_MB = 60.0  # idle memory "as today"
MAX_PER_IDLE_CLIENT_KB = 20.0


def _fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or a dash as wide as the spec's field for a missing value."""
    if value is None:
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group()) if width and width.group() else 1)
    return format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _added(cell: CellSummary | None, direct: CellSummary | None) -> float | None:
    if cell is None or direct is None or cell.p50_us is None or direct.p50_us is None:
        return None
    return cell.p50_us - direct.p50_us


def cell_summaries(
    results: Results, targets: list[str], mode: str, clients: int
) -> dict[str, CellSummary]:
    return {t: summarize(results.samples, t, mode, clients) for t in targets}


def pgbench_table(
    results: Results, targets: list[str], modes: list[str], clients: list[int]
) -> list[str]:
    header = (
        f"{'target':<16}{'TPS':>9}{'x direct':>9}{'x pgb':>7}{'x plain':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'+p50 us':>8}{'CPU s':>7}{'CPU us/tx':>10}{'PG us/tx':>9}{'all us/tx':>10}"
        f"{'RSS MB':>7}{'audit B/tx':>11}"
    )
    lines: list[str] = []
    for mode in modes:
        for count in clients:
            cells = cell_summaries(results, targets, mode, count)
            lines.append("")
            lines.append(f"== -M {mode}, {count} client{'s' if count != 1 else ''}")
            lines.append(header)
            direct = cells.get(DIRECT)
            for target in targets:
                cell = cells[target]
                if cell.runs == 0:
                    lines.append(f"{target:<16}  no successful run ({cell.errors} failed)")
                    continue
                tps_of = {name: summary.tps for name, summary in cells.items()}
                plain = _ratio(cell.tps, tps_of.get(PGWARDEN)) if target == POLICY else None
                lines.append(
                    f"{target:<16}{_fmt(cell.tps, '9.0f')}"
                    f"{_fmt(_ratio(cell.tps, tps_of.get(DIRECT)), '9.2f')}"
                    f"{_fmt(_ratio(cell.tps, tps_of.get(PGBOUNCER)), '7.2f')}"
                    f"{_fmt(plain, '8.2f')}"
                    f"{_fmt(cell.p50_us / 1000 if cell.p50_us else None, '8.3f')}"
                    f"{_fmt(cell.p99_us / 1000 if cell.p99_us else None, '8.3f')}"
                    f"{_fmt(_added(cell, direct) if target != DIRECT else None, '8.0f')}"
                    f"{_fmt(cell.proxy_cpu_seconds, '7.1f')}"
                    f"{_fmt(cell.proxy_cpu_us_per_tx, '10.1f')}"
                    f"{_fmt(cell.server_cpu_us_per_tx, '9.1f')}"
                    f"{_fmt(cell.total_cpu_us_per_tx, '10.1f')}"
                    f"{_fmt(cell.proxy_rss_kb / 1024 if cell.proxy_rss_kb else None, '7.1f')}"
                    f"{_fmt(cell.audit_bytes_per_tx, '11.0f')}"
                    + (f"  ({cell.errors} failed)" if cell.errors else "")
                )
            for proxy in (PGWARDEN, POLICY, STORE):
                ratio = _added_ratio(cells, proxy)
                if ratio is not None:
                    lines.append(f"added p50 {proxy}/pgbouncer: {ratio:.2f}x")
    return lines


def _added_ratio(cells: dict[str, CellSummary], proxy: str) -> float | None:
    direct = cells.get(DIRECT)
    mine = _added(cells.get(proxy), direct)
    theirs = _added(cells.get(PGBOUNCER), direct)
    if mine is None or theirs is None or theirs <= 0:
        return None
    return mine / theirs


def target_checks(
    results: Results, targets: list[str], modes: list[str], clients: list[int]
) -> list[str]:
    """Every target of issue 14 §1, as MET / MISSED / NOT MEASURED with the numbers."""
    lines: list[str] = []
    for mode in CHECKED_MODES:
        if mode not in modes or 8 not in clients:
            lines.append(
                f"8 clients {mode}: CPU and TPS targets NOT MEASURED (cell not in this run)"
            )
            continue
        cells = cell_summaries(results, targets, mode, 8)
        lines.append(_cpu_check(cells, mode))
        lines.append(
            _tps_check(
                cells, PGWARDEN, PGBOUNCER, MIN_TPS_VS_PGBOUNCER, f"8 clients {mode}: pgwarden TPS"
            )
        )
        lines.append(
            _tps_check(
                cells,
                PGWARDEN,
                PGBOUNCER,
                STRETCH_TPS_VS_PGBOUNCER,
                f"8 clients {mode}: pgwarden TPS (stretch)",
            )
        )
    for mode, limit in MAX_ADDED_P50_US.items():
        label = f"1 client {mode}: pgwarden added p50 <= +{limit:.0f} us"
        if mode not in modes or 1 not in clients:
            lines.append(f"{label}: NOT MEASURED (cell not in this run)")
            continue
        cells = cell_summaries(results, targets, mode, 1)
        mine = _added(cells.get(PGWARDEN), cells.get(DIRECT))
        theirs = _added(cells.get(PGBOUNCER), cells.get(DIRECT))
        if mine is None:
            lines.append(f"{label}: NOT MEASURED (needs direct and pgwarden)")
            continue
        verdict = "MET" if mine <= limit else "MISSED"
        bouncer = f", PgBouncer +{theirs:.0f} us" if theirs is not None else ""
        lines.append(f"{label}: {verdict} (+{mine:.0f} us{bouncer})")
    if "simple" in modes and 8 in clients:
        cells = cell_summaries(results, targets, "simple", 8)
        lines.append(
            _tps_check(
                cells, POLICY, PGWARDEN, MIN_POLICY_VS_PLAIN, "8 clients simple: with policy TPS"
            )
        )
        lines.append(
            _tps_check(
                cells, STORE, PGWARDEN, MIN_STORE_VS_PLAIN, "8 clients simple: with store sink TPS"
            )
        )
    else:
        lines.append(
            "8 clients simple: policy and store targets NOT MEASURED (cell not in this run)"
        )
    lines.extend(_bulk_checks(results.bulk))
    lines.extend(_idle_checks(results.idle))
    return lines


def _cpu_check(cells: dict[str, CellSummary], mode: str) -> str:
    label = f"8 clients {mode}: pgwarden CPU/tx <= {MAX_CPU_VS_PGBOUNCER:.0f}x PgBouncer's"
    mine = cells.get(PGWARDEN)
    theirs = cells.get(PGBOUNCER)
    a = mine.proxy_cpu_us_per_tx if mine else None
    b = theirs.proxy_cpu_us_per_tx if theirs else None
    if a is None or not b:
        return f"{label}: NOT MEASURED (needs pgwarden and pgbouncer with CPU times)"
    ratio = a / b
    verdict = "MET" if ratio <= MAX_CPU_VS_PGBOUNCER else "MISSED"
    return f"{label}: {verdict} ({a:.1f} vs {b:.1f} us/tx, {ratio:.2f}x)"


def _bulk_checks(bulk: list[BulkSample]) -> list[str]:
    tests = list(dict.fromkeys(b.test for b in bulk))
    if not tests:
        return ["bulk COPY / wide SELECT at PgBouncer's speed: NOT MEASURED (not in this run)"]
    lines: list[str] = []
    for test in tests:
        label = f"bulk {test}: pgwarden time <= {MAX_BULK_VS_PGBOUNCER:.2f}x PgBouncer's"
        mine = _bulk_mean(bulk, test, PGWARDEN)
        theirs = _bulk_mean(bulk, test, PGBOUNCER)
        if mine is None or not theirs:
            lines.append(f"{label}: NOT MEASURED (needs pgwarden and pgbouncer)")
            continue
        ratio = mine / theirs
        verdict = "MET" if ratio <= MAX_BULK_VS_PGBOUNCER else "MISSED"
        lines.append(f"{label}: {verdict} ({mine:.2f} vs {theirs:.2f} s, {ratio:.2f}x)")
    return lines


def _tps_check(
    cells: dict[str, CellSummary], mine: str, theirs: str, floor: float, label: str
) -> str:
    label = f"{label} >= {floor:.2f}x {theirs}"
    a = cells.get(mine)
    b = cells.get(theirs)
    if a is None or b is None or a.tps is None or not b.tps:
        return f"{label}: NOT MEASURED (needs {mine} and {theirs})"
    ratio = a.tps / b.tps
    verdict = "MET" if ratio >= floor else "MISSED"
    return f"{label}: {verdict} ({a.tps:.0f} vs {b.tps:.0f} TPS, {ratio:.2f}x)"


def _idle_checks(idle: Iterable[IdleResult]) -> list[str]:
    lines: list[str] = []
    found = False
    for result in idle:
        if result.target != PGWARDEN:
            continue
        found = True
        if result.error:
            lines.append(f"idle memory: NOT MEASURED ({result.error})")
            continue
        base_mb = result.rss_baseline_kb / 1024
        verdict = "MET" if base_mb <= MAX_BASELINE_RSS_MB else "MISSED"
        lines.append(
            f"idle memory: pgwarden baseline RSS <= {MAX_BASELINE_RSS_MB:.0f} MB: {verdict} "
            f"({base_mb:.1f} MB)"
        )
        per = result.per_connection_kb
        verdict = "MET" if per <= MAX_PER_IDLE_CLIENT_KB else "MISSED"
        lines.append(
            f"idle memory: pgwarden per idle client <= {MAX_PER_IDLE_CLIENT_KB:.0f} kB: {verdict} "
            f"({per:.1f} kB over {result.connections} connections)"
        )
    if not found:
        lines.append("idle memory: NOT MEASURED (pgwarden not in this run)")
    return lines


def bulk_table(bulk: list[BulkSample], targets: list[str]) -> list[str]:
    if not bulk:
        return []
    lines = ["", f"{'test':<14}{'target':<16}{'seconds':>9}{'x direct':>9}{'proxy CPU s':>12}"]
    tests = list(dict.fromkeys(b.test for b in bulk))
    for test in tests:
        direct_s = _bulk_mean(bulk, test, DIRECT)
        for target in targets:
            mine = [b for b in bulk if b.test == test and b.target == target]
            seconds = _bulk_mean(bulk, test, target)
            cpu = [b.proxy_cpu_seconds for b in mine if b.proxy_cpu_seconds is not None]
            failed = sum(1 for b in mine if b.error)
            lines.append(
                f"{test:<14}{target:<16}{_fmt(seconds, '9.2f')}"
                f"{_fmt(_ratio(seconds, direct_s), '9.2f')}"
                f"{_fmt(statistics.fmean(cpu) if cpu else None, '12.2f')}"
                + (f"  ({failed} failed)" if failed else "")
            )
    return lines


def _bulk_mean(bulk: list[BulkSample], test: str, target: str) -> float | None:
    values = [
        b.seconds for b in bulk if b.test == test and b.target == target and b.seconds is not None
    ]
    return statistics.fmean(values) if values else None


def idle_table(idle: list[IdleResult]) -> list[str]:
    if not idle:
        return []
    lines = [
        "",
        f"{'target':<16}{'conns':>6}{'fresh MB':>9}{'base MB':>8}{'loaded MB':>10}"
        f"{'kB/conn':>8}{'closed MB':>10}{'backends':>9}",
    ]
    for r in idle:
        if r.error:
            lines.append(f"{r.target:<16}  failed: {r.error}")
            continue
        lines.append(
            f"{r.target:<16}{r.connections:>6}{r.rss_fresh_kb / 1024:>9.1f}"
            f"{r.rss_baseline_kb / 1024:>8.1f}{r.rss_loaded_kb / 1024:>10.1f}"
            f"{r.per_connection_kb:>8.1f}{r.rss_after_close_kb / 1024:>10.1f}{r.backends:>9}"
        )
    return lines
