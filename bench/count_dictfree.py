"""Instruction counts of the dict-free query record prototype (bench/proto_dictfree.py).

Same events as ``bench/count_hot.py event-query`` (its ``query_completions``), 64 a batch.
Cases: ``check`` (not for counting: the prototype's lines and hashes must equal the dict
path's, ``SessionEvents.statement`` + ``Chainer.seal``, for 3,000 events), ``build`` (records
only), ``plain`` (build + seal), ``typed`` (+ the metrics counts from the record's typed
fields), ``lazy`` (+ ``Metrics.observe`` on dicts parsed back from the written lines: what a
dict-reading listener would cost). Compiled as the hot modules are::

    mkdir -p /tmp/dictfree && cd /tmp/dictfree && MYPYPATH=$REPO \\
        mypyc --ignore-missing-imports $REPO/bench/proto_dictfree.py
    cd $REPO && python3 bench/count_dictfree.py --compiled /tmp/dictfree check
    python3 bench/callgrind.py --calls 2000 -- \\
        python3 bench/count_dictfree.py --compiled /tmp/dictfree plain

Without ``--compiled`` the prototype runs as Python (stderr says which file was loaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if "--compiled" in sys.argv:  # the compiled prototype before the script's own directory
    sys.path.insert(0, sys.argv[sys.argv.index("--compiled") + 1])
sys.path[1:1] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from proto_dictfree import Frags, Record, Sealer, lazy_dicts, observe_typed  # noqa: E402, I001
from count_hot import MAX_CALLS, NoTrail, query_completions  # noqa: E402

from proxy.audit.chain import Chainer  # noqa: E402
from proxy.audit.events import SessionEvents  # noqa: E402
from proxy.compiled import build_kind  # noqa: E402
from proxy.metrics import Metrics  # noqa: E402
from proxy.relay.statement import Completion  # noqa: E402
from proxy.state import ServerState  # noqa: E402

CASES = ("check", "build", "plain", "typed", "lazy")


def setup() -> tuple[SessionEvents, list[Completion], Frags]:
    events, done = query_completions()
    return events, done, Frags("bench", events.identity, events.backend_pid)


def text_of(done: Completion) -> str:
    assert done.statement is not None
    return done.statement.text


def check(count: int = 3000) -> None:
    events, done, frags = setup()
    old = Chainer()
    new = Sealer()
    for start in range(0, count, 64):
        dicts = []
        records = []
        for n in range(start, min(start + 64, count)):
            event = events.statement(done[n], None)
            event["seq"] = n + 1
            dicts.append(event)
            record = frags.build(done[n], text_of(done[n]), None)
            record.seq = n + 1
            records.append(record)
        if old.seal(dicts) != new.seal(records):
            raise SystemExit(f"the prototype's lines differ from the dict path's in {start}+")
    print(f"identical lines and hashes for {count} events, last hash {new.prev}")


def run(case: str, calls: int) -> None:
    _events, done, frags = setup()
    metrics = Metrics(ServerState("bench", 0.0), NoTrail())
    sealer = Sealer()
    build = frags.build
    for start in range(0, calls, 64):
        batch: list[Record] = []
        for n in range(start, min(start + 64, calls)):
            record = build(done[n], text_of(done[n]), None)
            record.seq = n + 1
            batch.append(record)
        if case == "build":
            continue
        lines = sealer.seal(batch)
        if case == "typed":
            observe_typed(metrics, batch)
        elif case == "lazy":
            metrics.observe(lazy_dicts(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=CASES)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--compiled", metavar="DIR", help="where mypyc put proto_dictfree")
    args = ap.parse_args()
    if not 0 <= args.calls <= MAX_CALLS:
        ap.error(f"--calls must be between 0 and {MAX_CALLS}")
    print(
        f"build: {build_kind()}; prototype: {sys.modules[Frags.__module__].__file__}",
        file=sys.stderr,
    )
    if args.case == "check":
        check()
    else:
        run(args.case, args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
