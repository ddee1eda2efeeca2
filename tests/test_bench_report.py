"""bench/run_pgbench.py's verdicts: each issue-14 target is MET / MISSED from the numbers of one
run (synthetic samples here; the benchmark itself is never run by the suite)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from lib import report  # noqa: E402
from lib.pgbench import PgbenchRun  # noqa: E402
from lib.results import BulkSample, Results, Sample, summarize  # noqa: E402

TARGETS = ["direct", "pgbouncer", "pgwarden", "pgwarden-policy", "pgwarden-store"]


def sample(
    target: str, mode: str, clients: int, tps: float, p50: float, cpu_us: float | None
) -> Sample:
    seconds = 10
    transactions = int(tps * seconds)
    cpu = None if cpu_us is None else cpu_us * transactions / 1e6
    server = 30e-6 * transactions
    run = PgbenchRun(tps, transactions, 0, p50, p50 * 3)
    return Sample(target, mode, clients, 0, run, None, cpu, 40_000, None, server)


def results(pgwarden_cpu: float, pgwarden_tps: float, added_p50: float) -> Results:
    out = Results()
    for mode in ("simple", "extended", "prepared"):
        for clients in (1, 8):
            out.samples += [
                sample("direct", mode, clients, 30_000, 150, None),
                sample("pgbouncer", mode, clients, 20_000, 180, 10),
                sample("pgwarden", mode, clients, pgwarden_tps, 150 + added_p50, pgwarden_cpu),
                sample("pgwarden-policy", mode, clients, pgwarden_tps * 0.97, 200, 40),
                sample("pgwarden-store", mode, clients, pgwarden_tps * 0.85, 200, 50),
            ]
    for target, seconds in (("direct", 1.0), ("pgbouncer", 1.2), ("pgwarden", 1.5)):
        out.bulk.append(BulkSample("copy_out", target, 0, seconds, None))
    return out


def checks(res: Results) -> list[str]:
    return report.target_checks(res, TARGETS, ["simple", "extended", "prepared"], [1, 8])


def line(lines: list[str], start: str) -> str:
    (found,) = [x for x in lines if x.startswith(start)]
    return found


def test_cpu_per_transaction_for_every_target() -> None:
    res = results(25.0, 15_000, 30)
    direct = summarize(res.samples, "direct", "simple", 8)
    warden = summarize(res.samples, "pgwarden", "simple", 8)
    assert direct.proxy_cpu_us_per_tx is None
    assert direct.server_cpu_us_per_tx is not None and round(direct.server_cpu_us_per_tx) == 30
    assert warden.total_cpu_us_per_tx is not None and round(warden.total_cpu_us_per_tx) == 55
    table = "\n".join(report.pgbench_table(res, TARGETS, ["simple"], [8]))
    assert "PG us/tx" in table and "all us/tx" in table


def test_targets_met() -> None:
    lines = checks(results(25.0, 15_000, 30))
    assert line(lines, "8 clients simple: pgwarden CPU/tx").split(": ")[2].startswith("MET")
    assert "MET (25.0 vs 10.0 us/tx, 2.50x)" in line(lines, "8 clients extended: pgwarden CPU")
    assert "MET" in line(lines, "8 clients simple: pgwarden TPS >= 0.60x")
    assert "MET" in line(lines, "8 clients simple: pgwarden TPS (stretch) >= 0.70x")
    assert "MET (+30 us" in line(lines, "1 client simple: pgwarden added p50 <= +40 us")
    assert "MET" in line(lines, "8 clients simple: with policy TPS >= 0.95x")
    assert "MISSED" in line(lines, "8 clients simple: with store sink TPS >= 0.90x")
    assert "MISSED (1.50 vs 1.20 s, 1.25x)" in line(lines, "bulk copy_out")


def test_targets_missed() -> None:
    lines = checks(results(40.0, 13_000, 38))
    assert "MISSED (40.0 vs 10.0 us/tx, 4.00x)" in line(lines, "8 clients simple: pgwarden CPU")
    assert "MET" in line(lines, "8 clients simple: pgwarden TPS >= 0.60x")
    assert "MISSED" in line(lines, "8 clients simple: pgwarden TPS (stretch)")
    assert "MET" in line(lines, "1 client simple: pgwarden added p50")
    assert "MISSED (+38 us" in line(lines, "1 client extended: pgwarden added p50 <= +35 us")
    assert "MISSED" in line(lines, "1 client prepared: pgwarden added p50 <= +35 us")


def test_what_a_run_left_out_is_not_measured() -> None:
    res = results(25.0, 15_000, 30)
    lines = report.target_checks(res, ["direct", "pgwarden"], ["simple"], [8])
    assert "NOT MEASURED" in line(lines, "8 clients simple: pgwarden CPU/tx")
    assert "NOT MEASURED" in line(lines, "8 clients extended")
    assert "NOT MEASURED" in line(lines, "1 client simple")
    assert "NOT MEASURED" in line(lines, "idle memory")
