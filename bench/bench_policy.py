"""Microbenchmark of Policy.evaluate, the per-statement policy cost on the proxy hot path.

    python bench/bench_policy.py [--rules 50] [--seconds 0.5]

Builds a policy of N rules mixing every condition kind, then times ``evaluate`` on hand-built
facts for typical statements (so the number is the engine alone, not SQL parsing), with warm
caches (one identity, as in a long session) and cold ones (a new identity every call).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.identity import Identity
from proxy.policy.engine import Policy
from proxy.policy.loader import load_policy
from proxy.sql.facts import QueryFacts, Relation, StatementFacts

TEMPLATES = [
    "  - id: unbounded-{i}\n    when: {{commands: [UPDATE, DELETE], missing_where: true}}\n"
    "    unless: {{users: [dba, 'migrator_*']}}\n    action: block\n",
    "  - id: files-{i}\n    when: {{functions: [pg_read_file, 'pg_ls_*', lo_import]}}\n"
    "    unless: {{users: [postgres]}}\n    action: block\n",
    "  - id: pii-{i}\n    when: {{tables: [customers, 'billing.pay*'], access: write}}\n"
    "    unless: {{applications: ['crm-*']}}\n    action: block\n",
    "  - id: ddl-{i}\n    when: {{classes: [ddl]}}\n"
    "    unless: {{hours: 'Mon-Fri 09:00-18:00 Europe/Berlin'}}\n    action: flag\n",
    "  - id: analysts-{i}\n    when: {{users: ['analyst_*'], classes: [write, ddl, role]}}\n"
    "    action: block\n",
    "  - id: net-{i}\n    when: {{client_addrs: [10.0.0.0/8, 192.168.0.0/16],\n"
    "            commands: ['DROP *']}}\n    action: block\n",
    "  - id: copy-{i}\n    when: {{copy: [program, file]}}\n    action: block\n",
    "  - id: regex-{i}\n    when: {{sql_regex: '(?i)pg_sleep', databases: [prod]}}\n"
    "    action: flag\n",
    "  - id: orders-{i}\n    when: {{tables: [public.orders], commands: [SELECT]}}\n"
    "    action: flag\n",
    "  - id: role-{i}\n    when: {{role_change: true}}\n    action: flag\n",
]


def build_policy(n: int, directory: Path) -> Policy:
    text = "version: 1\ndefaults:\n  search_path: [public]\nrules:\n"
    text += "".join(TEMPLATES[i % len(TEMPLATES)].format(i=i) for i in range(n))
    path = directory / "bench.yaml"
    path.write_text(text)
    return load_policy([path])


def facts(command: str, relations: tuple[Relation, ...] = (), **kw: object) -> StatementFacts:
    return StatementFacts(
        text=f"{command} …",
        command=command,
        statement_class="write" if command in ("UPDATE", "DELETE", "INSERT") else "read",
        effective_commands=frozenset({command}),
        classes=frozenset({"write" if command in ("UPDATE", "DELETE", "INSERT") else "read"}),
        relations=relations,
        functions=frozenset(kw.get("functions", ())),  # type: ignore[call-overload]
        missing_where=bool(kw.get("missing_where", False)),
        copy=None,
        role_change=False,
        opaque=False,
        fingerprint="0",
    )


SELECT = facts("SELECT", (Relation(None, "orders", "read"), Relation("app", "items", "read")))
UPDATE = facts("UPDATE", (Relation(None, "customers", "write"),), missing_where=True)
FUNC = facts("SELECT", (), functions=("pg_catalog.pg_read_file", "now"))
CASES: dict[str, QueryFacts] = {
    "SELECT join": QueryFacts("q", (SELECT,)),
    "UPDATE no WHERE": QueryFacts("q", (UPDATE,)),
    "SELECT fn()": QueryFacts("q", (FUNC,)),
    "3 statements": QueryFacts("q", (SELECT, UPDATE, FUNC)),
}


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            fn()
        calls += 200
    return elapsed / calls * 1e6


def _cold_caller(policy: Policy, q: QueryFacts, now: datetime) -> Callable[[], object]:
    """Each call comes from a new user, so the per-identity caches never help."""
    counter: Iterator[int] = iter(range(10**9))
    return lambda: policy.evaluate(Identity(f"u{next(counter)}", "prod"), q, now)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        policy = build_policy(args.rules, Path(tmp))
    who = Identity("app", "prod", "web", "10.1.2.3")
    print(
        f"Policy.evaluate, {policy.rule_count} rules (µs per call, Python {sys.version.split()[0]})"
    )
    print(f"{'statement':<18} {'warm':>8} {'cold identity':>14} {'action':>7}")
    for name, q in CASES.items():
        warm = per_call_us(partial(policy.evaluate, who, q, now), args.seconds)
        cold_us = per_call_us(_cold_caller(policy, q, now), args.seconds)
        action = policy.evaluate(who, q, now).action
        print(f"{name:<18} {warm:>8.2f} {cold_us:>14.2f} {action:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
