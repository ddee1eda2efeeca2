"""The relay core and the trail: nothing is forwarded while the trail cannot accept records,
and with ``audit.write_ahead`` a statement reaches the server only after its dispatch record
is written (sans-IO: a scripted trail, bytes in and out)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy import config as config_module
from proxy.audit.events import SessionEvents
from proxy.gate import Gate
from proxy.identity import Identity
from proxy.policy.decision import Decision
from proxy.relay.core import RelayCore, RelayOptions
from proxy.relay.settings import ParserSettingsTracker
from tests.relay.harness import (
    bind,
    complete,
    error,
    execute,
    msg,
    parse,
    query,
    ready,
    sync,
)


class ScriptedTrail:
    """A trail whose writes happen when the test says so."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.accepting = True
        self.written = 0
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._accepting: list[Callable[[], None]] = []

    def submit(self, event: dict[str, Any]) -> None:
        event["seq"] = len(self.events) + 1
        self.events.append(event)

    def when_written(self, callback: Callable[[], None]) -> None:
        if self.written >= len(self.events):
            callback()
        else:
            self._waiters.append((len(self.events), callback))

    def when_accepting(self, callback: Callable[[], None]) -> None:
        self._accepting.append(callback)

    def write(self) -> None:
        self.written = len(self.events)
        due = [cb for seq, cb in self._waiters if seq <= self.written]
        self._waiters = [(seq, cb) for seq, cb in self._waiters if seq > self.written]
        for callback in due:
            callback()

    def fail(self) -> None:
        self.accepting = False

    def heal(self) -> None:
        self.accepting = True
        callbacks, self._accepting = self._accepting, []
        for callback in callbacks:
            callback()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


class Sink:
    def __init__(self, trail: ScriptedTrail) -> None:
        self.trail = trail
        self.sent = b""

    def send(self, data: bytes, events: list[dict[str, Any]] | None, *, wait: bool = True) -> None:
        for event in events or ():
            self.trail.submit(event)
        self.sent += data


class Relay:
    """A ready RelayCore between a scripted trail and the test."""

    def __init__(
        self, *, write_ahead: bool, refusal: Callable[[], Decision | None] = lambda: None
    ) -> None:
        cfg = config_module.defaults()
        self.gate = Gate(cfg, None)
        self.trail = ScriptedTrail()
        self.sink = Sink(self.trail)
        events = SessionEvents("test-proxy", self.gate, Identity("alice", "app", "psql"))
        self.core = RelayCore(
            self.gate,
            events,
            self.sink,
            RelayOptions(max_message_size=1 << 20, parameters="none"),
            audit_refusal=refusal,
            settings=ParserSettingsTracker(),
            on_parameter=lambda name, value: None,
        )
        self.wakes = 0
        self.upstream = b""
        self.core.watch_trail(self.trail, self._wake, write_ahead=write_ahead)

    def _wake(self) -> None:
        self.wakes += 1
        self.upstream += self.core.resume(0, 0.0)

    def client(self, data: bytes) -> bytes:
        out = self.core.client_messages(data, 0, 0.0)
        self.upstream += out
        return out

    def server(self, data: bytes) -> None:
        """Server bytes: watched messages go to the core, events to the trail."""
        core = self.core
        core.server_chunk(0)
        view = memoryview(data)
        while view:
            kind = view[0]
            length = int.from_bytes(view[1:5], "big")
            core.on_server(kind, bytes(view[5 : 1 + length]), 0)
            view = view[1 + length :]
        for event in core.take_chunk_events():
            self.trail.submit(event)


def test_without_write_ahead_bytes_pass_unchanged_and_nothing_is_dispatched() -> None:
    relay = Relay(write_ahead=False)
    data = query("select 1")
    assert relay.client(data) is data
    relay.server(complete("SELECT 1") + ready())
    assert relay.trail.of_type("dispatch") == []
    assert "dispatch" not in relay.trail.of_type("query")[0]


def test_a_query_is_forwarded_only_after_its_dispatch_is_written() -> None:
    relay = Relay(write_ahead=True)
    data = query("update t set x = 1 where id = 2")
    assert relay.client(data) == b""  # held: the dispatch is not written yet
    (dispatch,) = relay.trail.of_type("dispatch")
    assert dispatch["statement"] == "update t set x = 1 where id = 2"
    assert dispatch["protocol"] == "simple"
    assert dispatch["command"] == "UPDATE" and dispatch["tables"] == ["t"]
    assert dispatch["decision"]["action"] == "allow"
    assert dispatch["user"] == "alice" and dispatch["database"] == "app"
    assert relay.upstream == b""
    relay.trail.write()
    assert relay.upstream == data and relay.wakes == 1
    relay.server(complete("UPDATE 1") + ready())
    (record,) = relay.trail.of_type("query")
    assert record["dispatch"] == dispatch["seq"]
    assert "outcome" not in record


def test_a_pipeline_waits_for_one_write_of_all_its_dispatches() -> None:
    relay = Relay(write_ahead=True)
    pipeline = (
        b"".join(parse(f"insert into t values ({n})") + bind() + execute() for n in range(3))
        + sync()
    )
    assert relay.client(pipeline) == b""
    dispatches = relay.trail.of_type("dispatch")
    assert [d["statement"] for d in dispatches] == [f"insert into t values ({n})" for n in range(3)]
    assert all(d["protocol"] == "extended" for d in dispatches)
    relay.trail.write()
    assert relay.upstream == pipeline  # in order, unchanged, after one write
    assert relay.wakes == 1
    later = query("select 2")  # behind nothing held: its own dispatch, its own wait
    assert relay.client(later) == b""
    relay.trail.write()
    assert relay.upstream == pipeline + later


def test_bytes_behind_held_ones_wait_even_without_a_dispatch_of_their_own() -> None:
    relay = Relay(write_ahead=True)
    relay.client(query("select 1"))
    assert relay.client(msg(b"H")) == b""  # a Flush must not overtake the held Query
    relay.trail.write()
    assert relay.upstream == query("select 1") + msg(b"H")


def test_nothing_runs_while_the_trail_cannot_accept_records() -> None:
    relay = Relay(write_ahead=False)
    relay.trail.fail()
    statement = parse("insert into t values (1)") + bind()
    runs = execute() + sync()
    # Parse and Bind run nothing; Execute (and the Sync that would commit it) wait.
    assert relay.client(statement + runs) == statement
    assert relay.core.stalled
    assert relay.client(query("select 1")) == b""
    relay.trail.heal()
    assert relay.upstream == statement + runs + query("select 1")
    assert not relay.core.stalled


def test_a_sync_waits_for_the_trail_so_an_implicit_transaction_cannot_commit() -> None:
    relay = Relay(write_ahead=False)
    forwarded = parse("insert into t values (1)") + bind() + execute()
    assert relay.client(forwarded) == forwarded
    relay.trail.fail()
    assert relay.client(sync()) == b""
    relay.trail.heal()
    assert relay.upstream == forwarded + sync()


def test_under_fail_closed_statements_are_refused_not_held() -> None:
    cfg = config_module.defaults()
    refusal = Gate(cfg, None).audit_refusal()
    relay = Relay(write_ahead=False, refusal=lambda: refusal)
    relay.trail.fail()
    assert relay.client(query("select 1")) == b""
    assert not relay.core.stalled  # answered locally with 57P03, not waiting
    assert b"57P03" in relay.sink.sent


def test_with_write_ahead_nothing_is_forwarded_while_the_dispatch_cannot_be_written() -> None:
    relay = Relay(write_ahead=True)
    data = query("insert into t values (1)")
    assert relay.client(data) == b""
    relay.trail.fail()  # the write of the dispatch failed
    assert relay.client(query("insert into t values (2)")) == b""
    assert len(relay.trail.of_type("dispatch")) == 1  # the second waits before dispatching
    assert relay.upstream == b""
    relay.trail.write()
    relay.trail.heal()
    assert relay.upstream == data  # the second is dispatched now; it waits for that write
    assert len(relay.trail.of_type("dispatch")) == 2
    relay.trail.write()
    assert relay.upstream == data + query("insert into t values (2)")


def test_a_skipped_execute_closes_its_dispatch() -> None:
    relay = Relay(write_ahead=True)
    relay.client(
        parse("select 1/0") + bind() + execute() + parse("select 2") + bind() + execute() + sync()
    )
    relay.trail.write()
    relay.server(msg(b"1") + msg(b"2") + error("22012", "division by zero") + ready())
    first, second = relay.trail.of_type("dispatch")
    (failed,) = relay.trail.of_type("query")  # nothing of the second ran: no query record
    assert failed["dispatch"] == first["seq"] and failed["sqlstate"] == "22012"
    (skipped,) = relay.trail.of_type("dispatch_closed")
    assert skipped["dispatch"] == second["seq"] and skipped["outcome"] == "skipped"
    assert skipped["session_id"] == first["session_id"] and "statement" not in skipped


def test_a_statement_in_flight_when_the_connection_ends_is_unknown() -> None:
    relay = Relay(write_ahead=True)
    relay.client(query("select 1") + query("update t set x = 2 where id = 1"))
    relay.trail.write()
    relay.server(complete("SELECT 1") + ready())
    for event in relay.core.end_connection(client_left=False):
        relay.trail.submit(event)
    done, unknown = relay.trail.of_type("query")
    assert "outcome" not in done
    assert unknown["outcome"] == "unknown" and unknown["reason"] == "connection_lost"
    assert unknown["statement"] == "update t set x = 2 where id = 1"
    assert unknown["dispatch"] == relay.trail.of_type("dispatch")[1]["seq"]
    assert unknown["command"] == "UPDATE" and unknown["user"] == "alice"


@pytest.mark.parametrize("limit", [1, 0])
def test_a_suspended_portal_is_one_dispatched_statement(limit: int) -> None:
    relay = Relay(write_ahead=True)
    relay.client(parse("select generate_series(1, 3)") + bind() + execute(limit=1) + sync())
    relay.trail.write()
    relay.server(msg(b"1") + msg(b"2") + msg(b"s") + ready(b"T"))
    relay.client(execute(limit=limit) + sync())  # continues the same statement
    relay.trail.write()
    assert len(relay.trail.of_type("dispatch")) == 1
    if limit:
        relay.server(msg(b"s") + ready(b"T"))
        relay.core.queue.end_suspended(0)  # as the session does when it ends
        for event in relay.core.end_connection(client_left=True):
            relay.trail.submit(event)
    else:
        relay.server(complete("SELECT 3") + ready(b"T"))
    (record,) = relay.trail.of_type("query")
    assert record["dispatch"] == relay.trail.of_type("dispatch")[0]["seq"]
    assert "outcome" not in record and record.get("suspended", False) == bool(limit)


def test_pipelined_executes_of_one_portal_are_one_dispatched_statement() -> None:
    relay = Relay(write_ahead=True)
    relay.client(
        parse("select generate_series(1, 5)")
        + bind()
        + execute(limit=2)
        + execute(limit=2)
        + execute()
        + sync()
    )
    relay.trail.write()
    relay.server(msg(b"1") + msg(b"2") + msg(b"s") + msg(b"s") + complete("SELECT 5") + ready())
    (dispatch,) = relay.trail.of_type("dispatch")
    (record,) = relay.trail.of_type("query")
    assert record["dispatch"] == dispatch["seq"] and record["command_tag"] == "SELECT 5"
    assert relay.trail.of_type("dispatch_closed") == []


def test_a_statement_ended_by_a_fatal_error_is_not_unknown() -> None:
    relay = Relay(write_ahead=True)
    relay.client(query("select pg_sleep(10)"))
    relay.trail.write()
    relay.server(error("57P01", "terminating connection", severity="FATAL"))
    for event in relay.core.end_connection(client_left=False):
        relay.trail.submit(event)
    (record,) = relay.trail.of_type("query")
    assert record["sqlstate"] == "57P01" and "outcome" not in record
