"""The pieces of ``serve --workers N`` without processes: the trail-set layout and readers,
approval requests across the sibling channel, the merged /metrics page, the config key.
The processes themselves are tests/e2e/test_workers.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import config
from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.model import Approver, Request
from proxy.audit.reader import iter_events
from proxy.audit.trailset import trail_dirs, worker_audit_dir
from proxy.errors import ApprovalError
from proxy.identity import Identity, IdentitySource
from proxy.metrics import Metrics
from proxy.state import ServerState
from proxy.workers.approvals import request_from_json, request_to_json
from proxy.workers.metrics import merge_expositions
from tests.test_admin_approvals import TOKENS
from tests.test_console import SPEC, console


def _write(directory: Path, stamps: list[str], trail_id: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "audit.id").write_text(trail_id + "\n")
    lines = [
        json.dumps({"seq": i, "ts": ts, "type": "query", "w": directory.name}, sort_keys=True)
        for i, ts in enumerate(stamps, 1)
    ]
    (directory / "audit.jsonl").write_text("\n".join(lines) + "\n")


def test_worker_zero_is_the_audit_dir_itself(tmp_path: Path) -> None:
    assert worker_audit_dir(tmp_path, 0) == tmp_path
    assert worker_audit_dir(tmp_path, 3) == tmp_path / "worker-3"


def test_the_trail_set_is_the_dir_and_its_workers_merged_by_time(tmp_path: Path) -> None:
    _write(tmp_path, ["2026-12-01T10:00:00.000001Z", "2026-12-01T10:00:02.000000Z"], "a" * 32)
    _write(tmp_path / "worker-1", ["2026-12-01T10:00:01.000000Z"], "b" * 32)
    _write(tmp_path / "worker-10", ["2026-12-01T10:00:03.000000Z"], "c" * 32)
    (tmp_path / "worker-x").mkdir()  # not a worker's directory
    (tmp_path / "worker-2").mkdir()  # no trail in it
    assert trail_dirs(tmp_path) == [tmp_path, tmp_path / "worker-1", tmp_path / "worker-10"]
    events = list(iter_events(tmp_path))
    assert [e["ts"][17:19] for e in events] == ["00", "01", "02", "03"]
    assert [e["w"] for e in events] == [tmp_path.name, "worker-1", tmp_path.name, "worker-10"]
    # A worker's own directory is just its trail.
    assert [e["seq"] for e in iter_events(tmp_path / "worker-1")] == [1]


def test_a_single_trail_reads_as_before(tmp_path: Path) -> None:
    _write(tmp_path, ["2026-12-01T10:00:00.000001Z"], "a" * 32)
    assert trail_dirs(tmp_path) == [tmp_path]
    assert trail_dirs(tmp_path / "nothing") == [tmp_path / "nothing"]


def _request(broker: ApprovalBroker, user: str = "alice") -> Request:
    who = Identity(
        user, "app", "psql", "127.0.0.1", 5, "s1", "CN=alice", IdentitySource.CERTIFICATE
    )
    return broker.request(
        SPEC, text="DELETE FROM t WHERE a = $1", params=(b"1", None), identity=who,
        statement="DELETE FROM t WHERE a = $1", fingerprint="f00",
    )  # fmt: skip


def test_a_request_survives_the_sibling_channel_exactly() -> None:
    async def scenario() -> None:
        broker = ApprovalBroker("p", lambda e: None)
        request = _request(broker)
        voted = broker.decide(request.id, Approver("bob", frozenset({"dba"})), True, "fine")
        for value in (request, voted):
            again = request_from_json(json.loads(json.dumps(request_to_json(value))))
            assert again == value
            assert (again.text, again.params) == (value.text, value.params)

    asyncio.run(scenario())


def test_the_codec_knows_every_field_of_what_it_carries() -> None:
    """A field added to a request's values must be carried across (or this fails)."""
    import dataclasses

    from proxy.approvals.model import Binding, Vote
    from proxy.policy.review import ReviewSpec

    async def scenario() -> None:
        broker = ApprovalBroker("p", lambda e: None)
        data = request_to_json(_request(broker))
        request_fields = {f.name for f in dataclasses.fields(Request)}
        assert set(data) == request_fields
        assert set(data["spec"]) == {f.name for f in dataclasses.fields(ReviewSpec)}
        assert set(data["identity"]) == {f.name for f in dataclasses.fields(Identity)}
        assert len(data["binding"]) == len(dataclasses.fields(Binding))
        assert len(dataclasses.fields(Vote)) == 5

    asyncio.run(scenario())


class _OtherWorker:
    """The other worker as worker 0's console sees it: its own broker, through the codec."""

    def __init__(self, broker: ApprovalBroker) -> None:
        self.broker = broker

    async def requests(self) -> list[Request]:
        return [request_from_json(request_to_json(r)) for r in self.broker.book]

    async def decide(
        self, request_id: str, approver: Approver, approve: bool, reason: str, break_glass: bool
    ) -> Request | None:
        if request_id not in {r.id for r in self.broker.book}:
            return None
        return self.broker.decide(request_id, approver, approve, reason, break_glass=break_glass)


def test_the_console_decides_a_request_another_worker_holds(tmp_path: Path) -> None:
    async def scenario() -> None:
        other = ApprovalBroker("p", lambda e: None)
        async with console(tmp_path, remote=_OtherWorker(other)) as (local, b):
            request = _request(other)
            waiter = asyncio.ensure_future(other.wait(request.id))
            page_path = f"/console/reviews/{request.id}"
            _, page = await b.login(TOKENS["bob"])
            status, page = await b.get("/console/reviews")
            assert status == 200 and request.id in page
            status, page = await b.get(page_path)
            assert status == 200 and 'id="approve"' in page
            status, page = await b.post(
                page_path + "/decide", {"csrf": b.csrf(page), "verdict": "approve"}
            )
            assert status == 200 and "you approved this request" in page
            outcome = await asyncio.wait_for(waiter, 2)
            assert outcome.forward and outcome.request.approved_by == ("bob",)
            assert not list(local.book)
            # The other worker's rules apply: alice cannot approve her own request.
            second = _request(other)
            _, page = await b.login(TOKENS["alice"])
            status, page = await b.get(f"/console/reviews/{second.id}")
            status, page = await b.post(
                f"/console/reviews/{second.id}/decide", {"csrf": b.csrf(page), "verdict": "approve"}
            )
            assert status == 403 and "alice asked for this statement" in page
            status, page = await b.get("/console/reviews/nope")
            assert status == 404

    asyncio.run(scenario())


def test_an_owner_refusal_reaches_the_caller() -> None:
    async def scenario() -> None:
        other = _OtherWorker(ApprovalBroker("p", lambda e: None))
        request = _request(other.broker)
        with pytest.raises(ApprovalError) as refused:
            await other.decide(request.id, Approver("alice"), True, "", False)
        assert refused.value.status == 403

    asyncio.run(scenario())


class _Trail:
    pending = 0
    healthy = True

    def add_listener(self, fn: Any) -> None:
        pass

    def submit(self, event: dict[str, Any]) -> None:
        pass


def test_one_metrics_page_for_all_workers() -> None:
    pages = []
    for index, dropped in ((0, 2), (1, 5)):
        metrics = Metrics(ServerState("p", 1.0), _Trail())
        metrics.state.counters.cancels_dropped = dropped
        metrics.observe([{"type": "query", "class": "read", "duration_ms": 1.0}])
        pages.append((index, metrics.exposition()))
    merged = merge_expositions(pages).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert len(families) == len(list(text_string_to_metric_families(pages[0][1].decode())))
    dropped_samples = {
        s.labels["worker"]: s.value for s in families["pgwarden_cancels_dropped"].samples
    }
    assert dropped_samples == {"0": 2.0, "1": 5.0}
    assert families["pgwarden_cancels_dropped"].type == "counter"
    assert merged.count("# TYPE pgwarden_statement_duration_seconds histogram") == 1


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_out_of_range_is_a_config_error(value: str) -> None:
    key = next(k for k in config.SCHEMA if k.path == "workers")
    with pytest.raises(ValueError):
        key.parse(value)
    assert key.parse("4") == 4 and key.default == 1


def _events(directory: Path, trail_id: str, events: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "audit.id").write_text(trail_id + "\n")
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in events]
    (directory / "audit.jsonl").write_text("\n".join(lines) + "\n")


def _query(seq: int, ts: str, session: str, text: str) -> dict[str, Any]:
    return {"type": "query", "seq": seq, "ts": ts, "proxy_id": "p", "session_id": session,
            "statement": text, "user": "u", "database": "d"}  # fmt: skip


def _two_trails(tmp_path: Path) -> None:
    """Worker 0 and worker 1 each ran a statement as their seq 1, one of them rolled back."""
    _events(tmp_path, "a" * 32, [
        _query(1, "2026-12-01T10:00:00.000000Z", "s0", "insert into t values (0)"),
        {"type": "transaction", "seq": 2, "ts": "2026-12-01T10:00:00.500000Z", "proxy_id": "p",
         "session_id": "s0", "outcome": "rolled_back", "statements": [1]},
    ])  # fmt: skip
    _events(tmp_path / "worker-1", "b" * 32, [
        _query(1, "2026-12-01T10:00:01.000000Z", "s1", "insert into t values (1)"),
        {"type": "transaction", "seq": 2, "ts": "2026-12-01T10:00:01.500000Z", "proxy_id": "p",
         "session_id": "s1", "outcome": "committed", "statements": [1]},
    ])  # fmt: skip


def test_outcomes_are_told_apart_per_worker_trail(tmp_path: Path, capsys: Any) -> None:
    from proxy.cli import main

    _two_trails(tmp_path)
    assert main(["logs", str(tmp_path), "--rolled-back", "--format", "json"]) == 0
    shown = [json.loads(line)["statement"] for line in capsys.readouterr().out.splitlines()]
    assert shown == ["insert into t values (0)"]
    assert main(["logs", str(tmp_path), "--committed", "--format", "json"]) == 0
    shown = [json.loads(line)["statement"] for line in capsys.readouterr().out.splitlines()]
    assert shown == ["insert into t values (1)"]


def test_the_console_finds_an_event_by_seq_and_time_in_its_own_trail(tmp_path: Path) -> None:
    from proxy.console.data import TrailReader

    _two_trails(tmp_path)
    reader = TrailReader(str(tmp_path), None)
    found = reader.event(1, "p", "2026-12-01T10:00:01.000000Z")
    assert found is not None and found["session_id"] == "s1"
    found = reader.event(1, "p", "2026-12-01T10:00:00.000000Z")
    assert found is not None and found["session_id"] == "s0"


def test_following_a_trail_set_reads_every_trail_after_its_own_seq(tmp_path: Path) -> None:
    from proxy.audit.reader import follow_set

    _two_trails(tmp_path)
    events = follow_set({tmp_path: 1, tmp_path / "worker-1": 0}, poll=0.02)
    got = [next(events) for _ in range(3)]
    with (tmp_path / "worker-1" / "audit.jsonl").open("a") as handle:
        handle.write(json.dumps(_query(3, "2026-12-01T10:00:02Z", "s1", "select 3")) + "\n")
    got.append(next(events))
    events.close()
    seen = sorted((e["session_id"], e["seq"]) for e in got)
    assert seen == [("s0", 2), ("s1", 1), ("s1", 2), ("s1", 3)]


def test_the_owner_answer_does_not_wait_for_a_stuck_sibling(tmp_path: Path) -> None:
    from proxy.workers.role import WorkerRole
    from proxy.workers.siblings import Siblings, SiblingServer

    async def scenario() -> None:
        never = asyncio.Event()

        async def stuck(request: dict[str, Any]) -> None:
            await never.wait()

        async def owner(request: dict[str, Any]) -> list[str]:
            return ["forwarded", f"session of pid {request['pid']}"]

        async def stranger(request: dict[str, Any]) -> None:
            return None

        roles = [WorkerRole(i, 4, tmp_path, tmp_path / "audit") for i in range(4)]
        servers = [
            SiblingServer(roles[1], {"cancel": stuck}),
            SiblingServer(roles[2], {"cancel": stranger}),
            SiblingServer(roles[3], {"cancel": owner}),
        ]
        for server in servers:
            await server.start()
        assert all(roles[i].socket_path(i).exists() for i in (1, 2, 3))
        try:
            link = Siblings(roles[0])
            answer = await asyncio.wait_for(
                link.first("cancel", lambda a: isinstance(a, list), 30.0, pid=7), 5
            )
            assert answer == ["forwarded", "session of pid 7"]
            nobody = await asyncio.wait_for(
                Siblings(roles[3]).first("cancel", lambda a: a == "x", 0.5, pid=7), 5
            )
            assert nobody is None  # worker 1 timed out, worker 2 knew nothing
            with pytest.raises(RuntimeError, match="unknown op"):
                await link.call(2, "reload")
        finally:
            for server in servers:
                await server.aclose()
        assert not any(roles[i].socket_path(i).exists() for i in (1, 2, 3))

    asyncio.run(scenario())


def test_shared_login_failures_throttle_in_every_worker() -> None:
    from proxy.auth.ratelimit import LoginLimiter

    workers = [LoginLimiter(), LoginLimiter()]
    told: list[tuple[str, str, str, float]] = []

    def share_from(index: int) -> Any:
        def share(outcome: str, address: str, user: str, now: float) -> None:
            told.append((outcome, address, user, now))
            other = workers[1 - index]
            apply = other.failed if outcome == "failed" else other.succeeded
            apply(address, user, now, shared=True)

        return share

    for index, limiter in enumerate(workers):
        limiter.share = share_from(index)
    for attempt in range(10):  # the per-address threshold, alternating workers
        workers[attempt % 2].failed("192.0.2.7", "alice", 100.0 + attempt)
    assert len(told) == 10  # each told once, never echoed back
    for limiter in workers:
        assert not limiter.check("192.0.2.7", "bob", 109.5).allowed
    workers[0].succeeded("192.0.2.7", "alice", 111.0)
    workers[0].succeeded("192.0.2.7", "alice", 112.0)  # nothing left to clear: not told
    assert [t[0] for t in told[10:]] == ["succeeded"]
