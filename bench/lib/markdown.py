"""Markdown tables from the JSON a run wrote (``--json``), for docs/benchmarks.md.

Working from the JSON rather than from live objects means a run on another machine can be
turned into the same tables later: ``python bench/run_pgbench.py --render out.json``.
"""

from __future__ import annotations

import statistics
from typing import Any

DIRECT = "direct"
PGBOUNCER = "pgbouncer"
PGWARDEN = "pgwarden"
POLICY = "pgwarden-policy"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cells_by_key(payload: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(c["mode"], c["clients"], c["target"]): c for c in payload["cells"]}


def pgbench_table(payload: dict[str, Any]) -> list[str]:
    cells = _cells_by_key(payload)
    settings = payload["settings"]
    lines = [
        "| mode | clients | target | TPS | x direct | x PgBouncer | p50 ms | p99 ms "
        "| added p50 µs | proxy CPU µs/tx | PostgreSQL CPU µs/tx | total CPU µs/tx "
        "| proxy RSS MB | audit B/tx |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in settings["modes"]:
        for clients in settings["clients"]:
            direct = cells.get((mode, clients, DIRECT))
            bouncer = cells.get((mode, clients, PGBOUNCER))
            direct_tps: float | None = direct["tps"] if direct else None
            bouncer_tps: float | None = bouncer["tps"] if bouncer else None
            for target in settings["targets"]:
                cell = cells.get((mode, clients, target))
                if cell is None or cell["runs"] == 0:
                    lines.append(f"| {mode} | {clients} | {target} | failed | | | | | | | | | | |")
                    continue
                added = None
                if target != DIRECT and direct and direct["p50_us"] is not None:
                    added = cell["p50_us"] - direct["p50_us"]
                rss = cell["proxy_rss_kb"] / 1024 if cell["proxy_rss_kb"] else None
                server = cell.get("server_cpu_us_per_tx")  # absent in runs before it existed
                total = None if server is None else server + (cell["proxy_cpu_us_per_tx"] or 0)
                lines.append(
                    f"| {mode} | {clients} | {target} | {_num(cell['tps'], 0)} "
                    f"| {_num(_ratio(cell['tps'], direct_tps), 2)} "
                    f"| {_num(_ratio(cell['tps'], bouncer_tps), 2)} "
                    f"| {_num(cell['p50_us'] / 1000, 3)} | {_num(cell['p99_us'] / 1000, 3)} "
                    f"| {_num(added, 0)} | {_num(cell['proxy_cpu_us_per_tx'], 1)} "
                    f"| {_num(server, 1)} | {_num(total, 1)} "
                    f"| {_num(rss, 1)} | {_num(cell['audit_bytes_per_tx'], 0)} |"
                )
    return lines


def bulk_table(payload: dict[str, Any]) -> list[str]:
    bulk = payload["bulk"]
    if not bulk:
        return []
    lines = [
        "| test | target | seconds | x direct | proxy CPU s |",
        "|---|---|---:|---:|---:|",
    ]

    def mean(test: str, target: str, key: str) -> float | None:
        values = [
            b[key]
            for b in bulk
            if b["test"] == test and b["target"] == target and b[key] is not None
        ]
        return statistics.fmean(values) if values else None

    for test in dict.fromkeys(b["test"] for b in bulk):
        direct = mean(test, DIRECT, "seconds")
        for target in payload["settings"]["targets"]:
            seconds = mean(test, target, "seconds")
            lines.append(
                f"| {test} | {target} | {_num(seconds, 2)} | {_num(_ratio(seconds, direct), 2)} "
                f"| {_num(mean(test, target, 'proxy_cpu_seconds'), 2)} |"
            )
    return lines


def idle_table(payload: dict[str, Any]) -> list[str]:
    if not payload["idle"]:
        return []
    lines = [
        "| target | idle clients | RSS fresh MB | RSS baseline MB | RSS with clients MB "
        "| kB per client | RSS after close MB | PostgreSQL backends held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["idle"]:
        if r["error"]:
            lines.append(f"| {r['target']} | {r['connections']} | failed: {r['error']} ||||||")
            continue
        lines.append(
            f"| {r['target']} | {r['connections']} | {r['rss_fresh_kb'] / 1024:.1f} "
            f"| {r['rss_baseline_kb'] / 1024:.1f} | {r['rss_loaded_kb'] / 1024:.1f} "
            f"| {r['per_connection_kb']:.1f} | {r['rss_after_close_kb'] / 1024:.1f} "
            f"| {r.get('backends', '?')} |"
        )
    return lines


def render(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    settings = payload["settings"]
    out = [
        f"Command: `{payload['command']}`",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), kernel {machine['kernel']}, "
        f"Python {machine['python']}, {machine['pgbench']}, {machine['pgbouncer']}; "
        f"git {machine['git']}; {machine['date']}; load average at start "
        f"`{machine['loadavg_start']}`, at end `{machine.get('loadavg_end', '?')}`.",
        "",
        f"pgbench -S, scale 10, {settings['duration']} s per run, {settings['rounds']} rounds, "
        "means over rounds.",
        "",
        *pgbench_table(payload),
        "",
        "Target checks:",
        "",
        *[f"- {line}" for line in payload["checks"]],
    ]
    if payload["bulk"]:
        out += ["", f"Bulk ({settings['bulk_rows']:,} rows):", "", *bulk_table(payload)]
    if payload["idle"]:
        out += ["", "Idle connections:", "", *idle_table(payload)]
    return "\n".join(out) + "\n"
