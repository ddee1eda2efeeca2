"""Instruction counts per call of the hot modules, for comparing the compiled and pure builds.

Same protocol as bench/count_facts.py: run under callgrind with ``--calls 0`` and ``--calls N``
(``bench/callgrind.py`` does both and divides). Cases:

* ``framer`` — one client message through ``proxy.wire.framing.Framer`` (8 Query messages per
  chunk, as from 8 pipelined clients' worth of data);
* ``seal`` — one audit event canonicalised, hashed and chained (``proxy.audit.chain``), in
  batches of 64 as the trail writer seals them; the events are bench_audit's dicts, keys in
  no particular order (sealed with orjson's sort, as any record not in canonical order);
* ``seal-query`` — the same for query events as the session builds them
  (``proxy.audit.events``: keys in canonical order, sealed without a sort);
* ``event-query`` — one query event built from its ``Completion``
  (``SessionEvents.record``, the relay's call: the lean record; ``statement`` in code that
  predates it) and sealed, 64 at a time as the trail seals a loop turn's
  batch: the whole audit stage of a statement, submit bookkeeping and the write excluded;
* ``event-query-metrics`` — the same with the metrics listener (on by default) fed each
  sealed batch, as ``proxy.metrics.Metrics.observe`` is after every write;
* ``relay-literal`` / ``relay-repeat`` — one pgbench -S transaction through a whole Session
  (bench/bench_relay.py's ``relay``: the in-process test tier's harness, real gate, facts
  cache and audit trail in a temporary directory, fake transports), with a new literal each
  time or one repeated text; the run checks every statement was audited;
* ``relay-extended`` / ``relay-prepared`` — the same transaction as pgbench -M extended / -M
  prepared sends it (Parse/Bind/Describe/Execute/Sync, or Bind/Describe/Execute/Sync on a
  statement parsed once);
* ``relay-literal-policy`` / ``relay-extended-policy`` — relay-literal / relay-extended with
  ``policies/default.yaml`` loaded (what a policy costs per statement).

Which build runs is printed to stderr (``pgwarden --version``'s wording).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from bench_audit import make_event  # noqa: E402
from bench_relay import pgbench_transactions, relay  # noqa: E402

from proxy import config  # noqa: E402
from proxy.audit.chain import Chainer  # noqa: E402
from proxy.audit.events import SessionEvents  # noqa: E402
from proxy.compiled import build_kind  # noqa: E402
from proxy.errors import ProtocolError  # noqa: E402
from proxy.gate import Gate  # noqa: E402
from proxy.identity import Identity  # noqa: E402
from proxy.metrics import Metrics  # noqa: E402
from proxy.relay.statement import Completion, Statement, Via  # noqa: E402
from proxy.sql.facts import ParserSettings  # noqa: E402
from proxy.state import ServerState  # noqa: E402
from proxy.wire import messages as m  # noqa: E402
from proxy.wire.framing import Framer  # noqa: E402

MAX_CALLS = 20_000
CASES = (
    "framer",
    "seal",
    "seal-query",
    "event-query",
    "event-query-metrics",
    "relay-literal",
    "relay-repeat",
    "relay-extended",
    "relay-prepared",
    "relay-literal-policy",
    "relay-extended-policy",
)
DEFAULT_POLICY = BENCH_DIR.parent / "policies" / "default.yaml"


def framer_case(calls: int) -> None:
    query = m.query("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
    chunk = query * 8
    framer = Framer(ProtocolError, large_limit=1 << 20)
    for _ in range(calls // 8):
        for _message in framer.feed(chunk):
            pass


def seal_case(calls: int) -> None:
    events = [make_event(n) | {"seq": n + 1} for n in range(MAX_CALLS)]
    chainer = Chainer()
    for start in range(0, calls, 64):
        chainer.seal(events[start : min(start + 64, calls)])


def query_completions() -> tuple[SessionEvents, list[Completion]]:
    """A session's event builder and ``MAX_CALLS`` finished statements (bench_audit's four
    texts, through the real gate: default config, no policy)."""
    gate = Gate(config.defaults(), None)
    events = SessionEvents("bench", gate, Identity("alice", "bench", "pgbench", "10.0.0.1", 5432))
    events.backend_pid = 4242
    statements = [
        Statement(text, gate.inspect(text.encode(), ParserSettings()), None)
        for text in (make_event(n)["statement"] for n in range(4))
    ]
    done = [
        Completion(statements[n % 4], Via.SIMPLE, 1.8e9 + n / 7, n, n + 7919 * n % 10**8)
        for n in range(MAX_CALLS)
    ]
    return events, done


def seal_query_case(calls: int) -> None:
    events, done = query_completions()
    records = []
    for n, completion in enumerate(done):
        record = events.statement(completion, None)
        record["seq"] = n + 1
        records.append(record)
    chainer = Chainer()
    for start in range(0, calls, 64):
        chainer.seal(records[start : min(start + 64, calls)])


def event_query_case(with_metrics: bool) -> Callable[[int], None]:
    def run(calls: int) -> None:
        events, done = query_completions()
        observe = Metrics(ServerState("bench", 0.0), NoTrail()).observe if with_metrics else None
        chainer = Chainer()
        # What the relay calls: the lean record where the code has one (older code: a dict).
        statement = getattr(events, "record", events.statement)
        for start in range(0, calls, 64):
            batch = []
            for n in range(start, min(start + 64, calls)):
                record = statement(done[n], None)
                record["seq"] = n + 1
                batch.append(record)
            chainer.seal(batch)
            if observe is not None:
                observe(batch)

    return run


class NoTrail:
    """What Metrics needs of a trail (the cases call the listener themselves)."""

    pending = 0
    healthy = True

    def add_listener(self, fn: Callable[[list[dict[str, Any]]], None]) -> None:
        pass

    def submit(self, event: dict[str, Any]) -> None:
        pass


def relay_case(
    mode: str, distinct: bool = True, policy: Path | None = None
) -> Callable[[int], None]:
    def run(calls: int) -> None:
        # the same set-up work for any --calls
        exchanges = pgbench_transactions(MAX_CALLS + 64, mode, distinct)
        policy_text = policy.read_text() if policy is not None else None
        asyncio.run(relay(exchanges[: 64 + calls], policy_text, warmup=64))

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=CASES)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    if not 0 <= args.calls <= MAX_CALLS:
        ap.error(f"--calls must be between 0 and {MAX_CALLS}")
    print(f"build: {build_kind()}", file=sys.stderr)
    cases: dict[str, Callable[[int], None]] = {
        "framer": framer_case,
        "seal": seal_case,
        "seal-query": seal_query_case,
        "event-query": event_query_case(False),
        "event-query-metrics": event_query_case(True),
        "relay-literal": relay_case("simple"),
        "relay-repeat": relay_case("simple", distinct=False),
        "relay-extended": relay_case("extended"),
        "relay-prepared": relay_case("prepared"),
        "relay-literal-policy": relay_case("simple", policy=DEFAULT_POLICY),
        "relay-extended-policy": relay_case("extended", policy=DEFAULT_POLICY),
    }
    cases[args.case](args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
