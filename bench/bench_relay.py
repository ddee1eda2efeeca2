"""Proxy CPU per transaction in the relay itself, with no network and no PostgreSQL.

Feeds a Session the bytes of pgbench -S transactions (client Query; server RowDescription,
DataRow, CommandComplete, ReadyForQuery) with the real facts layer, policy engine and audit
trail (in a temporary directory), and reports microseconds of CPU per transaction. It
isolates the Python cost of pgwarden from syscalls and the server, so changes to the hot path
can be compared quickly:

    python bench/bench_relay.py [--transactions 20000] [--policy policies/default.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The in-process test tier's harness: fake transports, the real Session, gate and trail. It
# follows the session's API as that changes (setting session attributes by hand stopped
# driving the rebuilt session: it then relayed and audited nothing).
from tests.relay.harness import (
    Host,
    Wire,
    complete,
    data_row,
    query,
    ready,
    row_description,
)


async def _run(transactions: int, policy_text: str | None, distinct: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp), policy_text)
        wire = Wire(host)
        wire.login()
        reply = row_description("abalance") + data_row(b"0") + complete("SELECT 1") + ready()
        aids = [random.randint(1, 1_000_000) for _ in range(transactions)]
        queries = [
            query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid if distinct else 1};")
            for aid in aids
        ]
        started = time.process_time()
        for i, text in enumerate(queries):
            wire.client_sends(text)
            wire.server_sends(reply)
            if i % 8 == 7:  # one audit flush per loop turn, as with 8 busy clients
                await asyncio.sleep(0)
                wire.client.take()
                wire.upstream.take()
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
        audited = len(host.events("query"))
        if audited < transactions:
            raise SystemExit(f"only {audited} of {transactions} statements were audited")
        return elapsed / transactions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--policy", help="a policy file (default: none)")
    args = parser.parse_args()
    policy_text = Path(args.policy).read_text() if args.policy else None
    print(f"{'case':<44} {'µs CPU per transaction':>24}")
    for distinct in (False, True):
        label = "distinct literals (facts cache miss)" if distinct else "same text (cache hit)"
        micros = asyncio.run(_run(args.transactions, policy_text, distinct))
        print(f"{label:<44} {micros:>24.1f}")


if __name__ == "__main__":
    main()
