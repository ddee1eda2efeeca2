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

from proxy.server import tune_gc

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


def pgbench_queries(count: int, distinct: bool) -> list[bytes]:
    """pgbench -S Query messages: a new aid in each, or aid 1 in all."""
    return [
        query(
            "SELECT abalance FROM pgbench_accounts "
            f"WHERE aid = {random.randint(1, 1_000_000) if distinct else 1};"
        )
        for _ in range(count)
    ]


async def relay(queries: list[bytes], policy_text: str | None = None, warmup: int = 0) -> float:
    """Relay each query and its reply through one Session; the CPU seconds of all but the
    first ``warmup``. Fails unless every statement was audited."""
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp), policy_text)
        wire = Wire(host)
        wire.login()
        reply = row_description("abalance") + data_row(b"0") + complete("SELECT 1") + ready()
        for text in queries[:warmup]:  # caches, the first audit file
            wire.client_sends(text)
            wire.server_sends(reply)
        await asyncio.sleep(0)
        tune_gc()  # as `pgwarden serve` does once it is started
        started = time.process_time()
        for i, text in enumerate(queries[warmup:]):
            wire.client_sends(text)
            wire.server_sends(reply)
            if i % 8 == 7:  # one audit flush per loop turn, as with 8 busy clients
                await asyncio.sleep(0)
                wire.client.take()
                wire.upstream.take()
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
        audited = len(host.events("query"))
        if audited < len(queries):
            raise SystemExit(f"only {audited} of {len(queries)} statements were audited")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--policy", help="a policy file (default: none)")
    args = parser.parse_args()
    policy_text = Path(args.policy).read_text() if args.policy else None
    print(f"{'case':<44} {'µs CPU per transaction':>24}")
    for distinct in (False, True):
        label = "distinct literals (facts cache miss)" if distinct else "same text (cache hit)"
        seconds = asyncio.run(relay(pgbench_queries(args.transactions, distinct), policy_text))
        micros = seconds / args.transactions * 1e6
        print(f"{label:<44} {micros:>24.1f}")


if __name__ == "__main__":
    main()
