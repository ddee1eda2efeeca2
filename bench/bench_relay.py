"""Proxy CPU per transaction in the relay itself, with no network and no PostgreSQL.

Feeds a Session the bytes of pgbench -S transactions with the real facts layer, policy engine
and audit trail (in a temporary directory), and reports microseconds of CPU per transaction, in
pgbench's three protocols as libpq sends them: simple (Query; T D C Z back), extended (Parse,
Bind, Describe portal, Execute, Sync on the unnamed statement; 1 2 T D C Z back) and prepared
(the named statement parsed once, then Bind, Describe portal, Execute, Sync; 2 T D C Z). It
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
    bind,
    complete,
    cstr,
    data_row,
    execute,
    msg,
    parse,
    query,
    ready,
    row_description,
    sync,
)

PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = "
MODES = ("simple", "extended", "prepared")
ROW_REPLY = row_description("abalance") + data_row(b"0") + complete("SELECT 1") + ready()
PARSE_COMPLETE = msg(b"1")
BIND_COMPLETE = msg(b"2")


def describe_portal(portal: str = "") -> bytes:
    return msg(b"D", b"P" + cstr(portal))


Exchange = tuple[bytes, bytes]  # what the client sends, what the server answers


def aid(distinct: bool) -> str:
    return str(random.randint(1, 1_000_000) if distinct else 1)


def pgbench_transactions(count: int, mode: str = "simple", distinct: bool = True) -> list[Exchange]:
    """``count`` pgbench -S transactions in ``mode``: a new aid in each, or aid 1 in all.
    Prepared mode's first exchange also parses the named statement, as pgbench does."""
    if mode == "simple":
        return [(query(f"{PGBENCH_SELECT}{aid(distinct)};"), ROW_REPLY) for _ in range(count)]
    if mode == "extended":
        parsed = parse(f"{PGBENCH_SELECT}$1;")
        return [
            (
                parsed
                + bind(params=[aid(distinct).encode()])
                + describe_portal()
                + execute()
                + sync(),
                PARSE_COMPLETE + BIND_COMPLETE + ROW_REPLY,
            )
            for _ in range(count)
        ]
    if mode == "prepared":
        run = [
            (
                bind("P0_1", params=[aid(distinct).encode()])
                + describe_portal()
                + execute()
                + sync(),
                BIND_COMPLETE + ROW_REPLY,
            )
            for _ in range(count)
        ]
        first_client, first_server = run[0]
        run[0] = (
            parse(f"{PGBENCH_SELECT}$1;", "P0_1") + sync() + first_client,
            PARSE_COMPLETE + ready() + first_server,
        )
        return run
    raise ValueError(f"unknown mode {mode!r}")


async def relay(
    exchanges: list[Exchange], policy_text: str | None = None, warmup: int = 0
) -> float:
    """Relay each exchange through one Session; the CPU seconds of all but the first
    ``warmup``. Fails unless every statement was audited."""
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp), policy_text)
        wire = Wire(host)
        wire.login()
        for sent, reply in exchanges[:warmup]:  # caches, the first audit file
            wire.client_sends(sent)
            wire.server_sends(reply)
        await asyncio.sleep(0)
        tune_gc()  # as `pgwarden serve` does once it is started
        started = time.process_time()
        for i, (sent, reply) in enumerate(exchanges[warmup:]):
            wire.client_sends(sent)
            wire.server_sends(reply)
            if i % 8 == 7:  # one audit flush per loop turn, as with 8 busy clients
                await asyncio.sleep(0)
                wire.client.take()
                wire.upstream.take()
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
        audited = audited_statements(Path(tmp))
        if audited < len(exchanges):
            raise SystemExit(f"only {audited} of {len(exchanges)} statements were audited")
        return elapsed


def audited_statements(audit_dir: Path) -> int:
    """The query records in the trail, counted on the bytes: a JSON parse of every line would
    be most of what ``bench/count_hot.py`` counts (the key is never escaped; text is)."""
    return sum(path.read_bytes().count(b',"type":"query",') for path in audit_dir.rglob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--policy", help="a policy file (default: none)")
    args = parser.parse_args()
    policy_text = Path(args.policy).read_text() if args.policy else None
    print(f"{'case':<44} {'µs CPU per transaction':>24}")
    for mode in MODES:
        for distinct in (False, True):
            if mode != "simple" and not distinct:
                continue  # the text is the same either way: only the Bind value changes
            what = "distinct literals (facts cache miss)" if distinct else "same text (cache hit)"
            label = f"{mode}, {what}" if mode == "simple" else mode
            run = pgbench_transactions(args.transactions, mode, distinct)
            seconds = asyncio.run(relay(run, policy_text))
            micros = seconds / args.transactions * 1e6
            print(f"{label:<44} {micros:>24.1f}")


if __name__ == "__main__":
    main()
