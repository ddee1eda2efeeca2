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
import tempfile
import time
from typing import Any

from proxy import config
from proxy.audit.trail import AuditTrail
from proxy.identity import Identity
from proxy.server import ProxyServer, load_policies
from proxy.session import Session
from proxy.wire import messages as m


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _server_reply() -> bytes:
    rowdesc = m.message(ord("T"), b"\x00\x01abalance\x00" + bytes(18))
    row = m.message(ord("D"), b"\x00\x01\x00\x00\x00\x010")
    return rowdesc + row + m.message(ord("C"), b"SELECT 1\x00") + m.ready_for_query(ord("I"))


async def _run(transactions: int, policies: list[str], distinct: bool) -> float:
    with tempfile.TemporaryDirectory() as audit_dir:
        cfg = config.defaults().replace(audit__dir=audit_dir, policies=policies)
        trail = AuditTrail(cfg, "bench")
        trail.open()
        server = ProxyServer(cfg, trail, load_policies(cfg))
        session = Session(server)
        session.client = _NullTransport()  # type: ignore[assignment]
        session.upstream = _NullTransport()  # type: ignore[assignment]
        session.identity = Identity("bench", "bench", "pgbench", "127.0.0.1", 5555, "s")
        session.phase = "ready"
        session.backend_pid = 1
        reply = _server_reply()
        aids = [random.randint(1, 1_000_000) for _ in range(transactions)]
        queries = [
            m.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid if distinct else 1};")
            for aid in aids
        ]
        loop = asyncio.get_running_loop()
        started = time.process_time()
        for i, query in enumerate(queries):
            session.client_data(query)
            session.server_data(reply)
            if i % 8 == 7:  # one audit flush per loop turn, as with 8 busy clients
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
        await trail.aclose()
        del loop
        return elapsed / transactions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--policy", action="append", default=[])
    args = parser.parse_args()
    print(f"{'case':<44} {'µs CPU per transaction':>24}")
    for distinct in (False, True):
        label = "distinct literals (facts cache miss)" if distinct else "same text (cache hit)"
        micros = asyncio.run(_run(args.transactions, args.policy, distinct))
        print(f"{label:<44} {micros:>24.1f}")


if __name__ == "__main__":
    main()
