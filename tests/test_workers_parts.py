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
from proxy.identity import Identity
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
    who = Identity(user, "app", "psql", "127.0.0.1", 5, "s1", "CN=alice")
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
