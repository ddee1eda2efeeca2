"""Instruction counts per statement for the SQL facts cache, for valgrind's callgrind.

Wall-clock timings mean nothing on a shared machine; instruction counts are repeatable. Run
one case twice under callgrind, once with ``--calls 0`` and once with ``--calls N``; the
difference in total instructions (``Ir``) divided by N is the cost of one call::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/count_facts.py \\
        literal-pgbench --calls 0
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/count_facts.py \\
        literal-pgbench --calls 2000

(``bench/callgrind.py`` does both runs and the division.) Both runs build the same inputs and
warm the cache the same way, so only the measured calls differ. The warm-up fills the cache (1,000
entries here) with one-off texts first, so a case that inserts pays for eviction as in
production.

Cases: ``literal-*`` send the same statement with a new integer literal each call (simple
protocol, literals inlined, as pgbench -S does); ``repeat-*`` send one text again and again;
``*-bytes`` go through the wire-bytes entry point the session uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.sql.cache import FactsCache
from proxy.sql.facts import ParserSettings

PGBENCH = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
TYPICAL = (
    "SELECT o.id, o.created_at, c.name, lower(c.email) AS email FROM orders o "
    "JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open' AND o.total > {} "
    "AND c.country = $1 AND o.created_at >= now() - interval '7 days' ORDER BY o.id LIMIT 50"
)
TEMPLATES = {"pgbench": PGBENCH, "typical": TYPICAL}
MAX_CALLS = 20_000
# Smaller than the default 10,000 entries so that filling it costs little under valgrind;
# the cache is full (and evicting) all the same.
CACHE_SIZE = 1_000


def build(case: str) -> Callable[[int], None]:
    kind, _, rest = case.partition("-")
    name, _, entry = rest.partition("-")
    template = TEMPLATES[name]
    settings = ParserSettings()
    cache = FactsCache(CACHE_SIZE)
    # one-off texts of another statement fill the cache first, as a busy proxy's would be
    for i in range(CACHE_SIZE + 100):
        cache.analyze(f"SELECT * FROM warmup WHERE id = {i}", settings)
    if kind == "literal":
        texts = [template.format(1_000_000 + i) for i in range(MAX_CALLS + 10)]
    elif kind == "repeat":
        texts = [template.format(42)] * (MAX_CALLS + 10)
    else:
        raise SystemExit(f"unknown case {case!r}")
    if entry == "bytes":
        # the session hands over a fresh bytes object per message
        inputs: list[str] | list[bytes] = [t.encode() for t in texts]
        analyze: Callable[..., object] = cache.analyze_bytes
    else:
        inputs, analyze = texts, cache.analyze
    for item in inputs[:10]:
        analyze(item, settings)

    def run(calls: int) -> None:
        for item in inputs[10 : 10 + calls]:
            analyze(item, settings)

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "case",
        choices=[
            f"{k}-{n}{e}" for k in ("literal", "repeat") for n in TEMPLATES for e in ("", "-bytes")
        ],
    )
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    if not 0 <= args.calls <= MAX_CALLS:
        ap.error(f"--calls must be between 0 and {MAX_CALLS}")
    build(args.case)(args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
