"""The row guard and pgwarden's own requests, from bytes (the in-process tier).

A scripted server answers, round by round, what the session sent it: the BEGIN / SAVEPOINT
the guard injects, the statement, and the RELEASE / COMMIT / ROLLBACK (TO) that follow. The
client must see exactly what PostgreSQL would have sent it without pgwarden (within the
limit) or what a blocked statement gets (over it); none of the injected replies; and the
same bytes and records however both streams are chunked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.relay import inject
from tests.relay.harness import (
    Host,
    Wire,
    bind,
    complete,
    data_row,
    error,
    execute,
    msg,
    parameter_status,
    parse,
    query,
    ready,
    row_description,
    split,
    sync,
)

POLICY = """\
version: 1
defaults: {action: allow, on_unparsable: block}
rules:
  - id: few-rows
    when: {commands: [UPDATE, DELETE]}
    action: allow
    max_rows: 3
    message: At most three rows.
"""

FEW = "update t set q = 1 where id < 3"
MANY = "update t set q = 1"
PARSED = msg(b"1")
BOUND = msg(b"2")
CLOSED = msg(b"3")


def _injected_ok(tag: str) -> bytes:
    """What the server answers one extended request of the injector."""
    return PARSED + BOUND + CLOSED + complete(tag) + CLOSED


def _play(
    tmp: Path,
    rounds: list[tuple[bytes, bytes]],
    client_cuts: list[int],
    server_cuts: list[int],
    **cfg: Any,
) -> tuple[list[bytes], list[bytes], list[dict[str, Any]]]:
    """Each round: the client's bytes, then the server's answer to what it was sent."""
    host = Host(tmp, POLICY, **cfg)
    wire = Wire(host)
    wire.login()
    to_client, to_server = [], []
    for client_bytes, server_bytes in rounds:
        for piece in split(client_bytes, client_cuts):
            if piece:
                wire.client_sends(piece)
        sent = wire.upstream.take()
        for piece in split(server_bytes, server_cuts):
            if piece:
                wire.server_sends(piece)
        to_server.append(sent)
        to_client.append(wire.client.take())
    events = [
        {k: e.get(k) for k in ("statement", "command_tag", "rows", "sqlstate", "tx_status")}
        | {"row_guard": e.get("row_guard")}
        for e in host.events("query")
    ]
    return to_client, to_server, events


SIMPLE_WITHIN = [
    (query(FEW), complete("BEGIN") + ready(b"T")),
    (b"", complete("UPDATE 2") + ready(b"T")),
    (b"", complete("COMMIT") + ready(b"I")),
]


def test_simple_query_within_the_limit_is_what_postgres_sends(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, SIMPLE_WITHIN, [], [])
    assert to_server == [query("BEGIN"), query(FEW), query("COMMIT")]
    assert b"".join(to_client) == complete("UPDATE 2") + ready(b"I")
    assert events == [
        {
            "statement": FEW,
            "command_tag": "UPDATE 2",
            "rows": 2,
            "sqlstate": None,
            "tx_status": "I",
            "row_guard": {"max_rows": 3, "rule": "few-rows", "outcome": "within", "rows": 2},
        }
    ]


SIMPLE_EXCEEDED = [
    (query(MANY + " returning id"), complete("BEGIN") + ready(b"T")),
    (
        b"",
        row_description("id")
        + b"".join(data_row(str(i).encode()) for i in range(4))
        + parameter_status("application_name", "x")
        + complete("UPDATE 4")
        + ready(b"T"),
    ),
    (b"", complete("ROLLBACK") + ready(b"I")),
]


def test_simple_query_over_the_limit_is_rolled_back_and_refused(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, SIMPLE_EXCEEDED, [], [])
    assert to_server == [query("BEGIN"), query(MANY + " returning id"), query("ROLLBACK")]
    out = b"".join(to_client)
    # No RETURNING row, no tag: the policy error, then ReadyForQuery as after a block. A
    # ParameterStatus belongs to no request: it is kept.
    assert out.startswith(parameter_status("application_name", "x") + b"E")
    assert b"C42501" in out and b"At most three rows." in out and b"changed 4 rows" in out
    assert out.endswith(ready(b"I"))
    assert b"D\x00" not in out.replace(b"\x00D", b"")  # no DataRow message
    [event] = events
    assert event["sqlstate"] == "42501" and event["rows"] is None
    assert event["row_guard"] == {
        "max_rows": 3,
        "rule": "few-rows",
        "outcome": "exceeded",
        "rows": 4,
    }


IN_BLOCK_EXCEEDED = [
    (query("begin"), complete("BEGIN") + ready(b"T")),
    (query(MANY), complete("SAVEPOINT") + ready(b"T")),
    (b"", complete("UPDATE 9") + ready(b"T")),
    (
        b"",
        complete("ROLLBACK")
        + complete("RELEASE")
        + error("22P02", "invalid input syntax")
        + ready(b"E"),
    ),
    (query("commit"), complete("ROLLBACK") + ready(b"I")),
]


def test_inside_a_block_the_refusal_fails_the_transaction_like_a_block(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, IN_BLOCK_EXCEEDED, [], [])
    assert to_server[1] == query("SAVEPOINT pgwarden_row_guard")
    assert to_server[2] == query(MANY)
    assert (
        to_server[3].startswith(b"Q")
        and b"ROLLBACK TO SAVEPOINT pgwarden_row_guard" in (to_server[3])
    )
    assert b"22P02" not in b"".join(to_client)
    assert to_client[3].endswith(ready(b"E")) and b"C42501" in to_client[3]
    assert [e["tx_status"] for e in events] == ["T", "E", "I"]
    assert events[2]["command_tag"] == "ROLLBACK"  # the COMMIT of a failed transaction


# Extended protocol, inside BEGIN, one Sync: Parse and Bind go out; the Execute waits for
# their replies (a Flush asks for them), then the savepoint, then the Execute itself.
PIPELINE_IN_BLOCK = [
    (query("begin"), complete("BEGIN") + ready(b"T")),
    (parse(MANY) + bind() + execute() + parse("select 1") + bind() + execute() + sync(), b""),
    (b"", PARSED + BOUND),
    (b"", _injected_ok("SAVEPOINT")),
    (b"", complete("UPDATE 5")),
    (
        b"",
        _injected_ok("ROLLBACK") + _injected_ok("RELEASE") + error("42601", "syntax error"),
    ),
    (b"", ready(b"E")),
]


def test_a_pipeline_waits_behind_the_guarded_execute(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, PIPELINE_IN_BLOCK, [], [])
    assert to_server[1] == parse(MANY) + bind() + msg(b"H")  # the Execute waits
    savepoint = inject.encode(inject.Injected("SAVEPOINT pgwarden_row_guard", False))
    assert to_server[3] == savepoint  # once Parse and Bind are answered
    assert to_server[4] == execute() + msg(b"H")
    assert b"select 1" not in b"".join(to_server)  # never sent: dropped up to Sync
    assert b"ROLLBACK TO SAVEPOINT" in to_server[5] and b"PGWARDEN ROW GUARD" in to_server[5]
    assert to_server[6] == sync()
    assert to_client[2] == PARSED + BOUND and to_client[3] == to_client[4] == b""
    assert to_client[5].startswith(b"E") and b"C42501" in to_client[5]
    assert b"42601" not in to_client[5]  # the injected failure's own error is not shown
    assert to_client[6] == ready(b"E")
    assert events[-1]["row_guard"]["outcome"] == "exceeded"


# Extended protocol outside a transaction: the guard's BEGIN makes the client's implicit
# transaction explicit; the client's Sync ends it with a COMMIT.
PIPELINE_IMPLICIT_WITHIN = [
    (parse(FEW) + bind() + execute() + sync(), PARSED + BOUND),
    (b"", _injected_ok("BEGIN")),
    (b"", complete("UPDATE 2")),
    (b"", _injected_ok("COMMIT") + ready(b"I")),
]


def test_an_implicit_transaction_the_guard_opened_ends_at_the_clients_sync(
    tmp_path: Path,
) -> None:
    to_client, to_server, events = _play(tmp_path, PIPELINE_IMPLICIT_WITHIN, [], [])
    assert to_server[1] == inject.encode(inject.Injected("BEGIN", False))
    assert to_server[2] == execute() + msg(b"H")
    assert to_server[3] == inject.encode(inject.Injected("COMMIT", False)) + sync()
    assert b"".join(to_client) == PARSED + BOUND + complete("UPDATE 2") + ready(b"I")
    assert events[0]["row_guard"]["outcome"] == "within"


PIPELINE_FAILS_ITSELF = [
    (parse(FEW) + bind() + execute() + sync(), PARSED + BOUND),
    (b"", _injected_ok("BEGIN")),
    (b"", error("22012", "division by zero")),
    (b"", ready(b"E")),
    (b"", complete("ROLLBACK") + ready(b"I")),
]


def test_a_statement_that_fails_by_itself_keeps_its_error(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, PIPELINE_FAILS_ITSELF, [], [])
    assert to_server[3] == sync()  # discarding: no COMMIT, the Sync alone
    assert to_server[4] == query("ROLLBACK")  # the failed block the guard opened, ended
    out = b"".join(to_client)
    assert b"C22012" in out and b"42501" not in out
    assert out.endswith(ready(b"I")) and ready(b"E") not in out
    assert events[0]["row_guard"]["outcome"] == "failed"


# A simple Query inside that batch ends the implicit transaction in PostgreSQL: the guard's
# transaction is committed before it, and the Query runs on its own.
QUERY_INSIDE_THE_BATCH = [
    (parse(FEW) + bind() + execute() + query("select 1"), PARSED + BOUND),
    (b"", _injected_ok("BEGIN")),
    (b"", complete("UPDATE 2")),
    (b"", _injected_ok("COMMIT")),
    (b"", complete("SELECT 1") + ready(b"I")),
]


def test_a_query_inside_the_batch_ends_the_transaction_the_guard_opened(
    tmp_path: Path,
) -> None:
    to_client, to_server, events = _play(tmp_path, QUERY_INSIDE_THE_BATCH, [], [])
    assert to_server[3] == inject.encode(inject.Injected("COMMIT", False))
    assert to_server[4] == query("select 1")
    assert b"".join(to_client) == (
        PARSED + BOUND + complete("UPDATE 2") + complete("SELECT 1") + ready(b"I")
    )
    assert [e["tx_status"] for e in events] == ["I", "I"]


# Two guarded statements in one batch outside a transaction: the second runs inside a
# savepoint of the transaction the first one's guard opened.
TWO_IN_ONE_BATCH = [
    (parse(FEW) + bind() + execute() + parse(FEW) + bind() + execute() + sync(), PARSED + BOUND),
    (b"", _injected_ok("BEGIN")),
    (b"", complete("UPDATE 2")),
    (b"", PARSED + BOUND),
    (b"", _injected_ok("SAVEPOINT")),
    (b"", complete("UPDATE 2")),
    (b"", _injected_ok("RELEASE")),
    (b"", _injected_ok("COMMIT") + ready(b"I")),
]


def test_two_guarded_statements_in_one_batch(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, TWO_IN_ONE_BATCH, [], [])
    sent = b"".join(to_server)
    assert sent.count(b"BEGIN") == 1 and sent.count(b"SAVEPOINT pgwarden_row_guard") == 2
    assert to_server[-1] == inject.encode(inject.Injected("COMMIT", False)) + sync()
    assert b"".join(to_client) == (PARSED + BOUND + complete("UPDATE 2")) * 2 + ready(b"I")
    assert [e["row_guard"]["outcome"] for e in events] == ["within", "within"]


# An Execute with a row limit that suspends the portal: its rows are not counted by a tag,
# so it is rolled back and refused (fail closed), never left half-known.
SUSPENDED = [
    (parse(FEW + " returning id") + bind() + execute(limit=1) + sync(), PARSED + BOUND),
    (b"", _injected_ok("BEGIN")),
    (b"", data_row(b"1") + msg(b"s")),
    (b"", _injected_ok("ROLLBACK")),
    (b"", ready(b"I")),
]


def test_a_suspended_portal_counts_nothing_and_is_refused(tmp_path: Path) -> None:
    to_client, to_server, events = _play(tmp_path, SUSPENDED, [], [])
    assert to_server[2] == execute(limit=1) + msg(b"H")
    assert to_server[4] == sync()
    out = b"".join(to_client)
    assert out.startswith(PARSED + BOUND + b"E") and b"C42501" in out
    assert b"did not say how many rows" in out and out.endswith(ready(b"I"))
    assert data_row(b"1") not in out
    [event] = events
    assert event["row_guard"]["outcome"] == "uncounted" and event["sqlstate"] == "42501"


SCRIPTS = {
    "suspended": SUSPENDED,
    "two_in_one_batch": TWO_IN_ONE_BATCH,
    "query_inside_the_batch": QUERY_INSIDE_THE_BATCH,
    "simple_within": SIMPLE_WITHIN,
    "simple_exceeded": SIMPLE_EXCEEDED,
    "in_block_exceeded": IN_BLOCK_EXCEEDED,
    "pipeline_in_block": PIPELINE_IN_BLOCK,
    "pipeline_implicit": PIPELINE_IMPLICIT_WITHIN,
    "pipeline_fails": PIPELINE_FAILS_ITSELF,
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(0, 300), max_size=6),
    st.lists(st.integers(0, 300), max_size=6),
)
def test_any_chunking_gives_the_same_session(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    client_cuts: list[int],
    server_cuts: list[int],
) -> None:
    script = SCRIPTS[name]
    whole = _play(tmp_path_factory.mktemp("whole"), script, [], [])
    chunked = _play(tmp_path_factory.mktemp("chunked"), script, client_cuts, server_cuts)
    assert (b"".join(chunked[0]), b"".join(chunked[1]), chunked[2]) == (
        b"".join(whole[0]),
        b"".join(whole[1]),
        whole[2],
    )


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_write_ahead_dispatches_a_guarded_statement_once(tmp_path: Path, name: str) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "ahead").mkdir()
    plain = _play(tmp_path / "plain", SCRIPTS[name], [], [])
    ahead = _play(tmp_path / "ahead", SCRIPTS[name], [], [], audit__write_ahead=True)
    assert ahead == plain  # same bytes both ways, same records
    trail = sorted((tmp_path / "ahead" / "audit").glob("*.jsonl"))
    kinds = [json.loads(line)["type"] for f in trail for line in f.read_text().splitlines()]
    assert kinds.count("dispatch") == kinds.count("query")


def test_monitor_mode_runs_the_statement_unguarded_and_records_the_count(
    tmp_path: Path,
) -> None:
    host = Host(
        tmp_path, POLICY.replace("on_unparsable: block}", "on_unparsable: block, mode: monitor}")
    )
    wire = Wire(host)
    wire.login()
    wire.client_sends(query(MANY))
    assert wire.upstream.take() == query(MANY)  # no savepoint: nothing is guarded
    wire.server_sends(complete("UPDATE 7") + ready())
    assert wire.client.take() == complete("UPDATE 7") + ready()
    [event] = host.events("query")
    assert event["row_guard"] == {
        "max_rows": 3,
        "rule": "few-rows",
        "outcome": "monitor",
        "rows": 7,
        "would_refuse": True,
    }


def test_a_guarded_statement_in_a_query_of_several_is_refused_unsent(tmp_path: Path) -> None:
    host = Host(tmp_path, POLICY)
    wire = Wire(host)
    wire.login()
    wire.client_sends(query(f"select 1; {FEW}"))
    assert wire.upstream.take() == b""  # answered locally, as a block outside a transaction
    out = wire.client.take()
    assert b"C42501" in out and b"on its own" in out and out.endswith(ready())


def test_injector_consumes_exactly_its_replies() -> None:
    injector = inject.Injector()
    sent = injector.send(inject.Injected("SAVEPOINT x", False), inject.Injected("SHOW y", True))
    assert sent.count(b"SAVEPOINT x") == 1 and sent.endswith(query("SHOW y"))
    answers = []
    for kind, body in [
        (49, b""), (50, b""), (51, b""), (67, b"SAVEPOINT\x00"), (51, b""),
        (84, b""), (67, b"SHOW\x00"), (90, b"T"),
    ]:  # fmt: skip
        answer = injector.on_message(kind, body, 1 if kind == 67 and body == b"SHOW\x00" else 0)
        if answer is not None:
            answers.append(answer)
    assert [(a.request.sql, a.tag, a.ok, a.status, a.rows) for a in answers] == [
        ("SAVEPOINT x", "SAVEPOINT", True, 0, 0),
        ("SHOW y", "SHOW", True, ord("T"), 1),
    ]
    assert not injector.busy
    with pytest.raises(Exception, match="no injected request"):
        injector.on_message(90, b"I", 0)


def test_a_parse_of_sql_execute_is_judged_by_the_body_it_runs(tmp_path: Path) -> None:
    """``PREPARE q AS UPDATE …`` then a protocol Parse of ``EXECUTE q``: the Parse runs the
    stored body, so it is judged (and blocked, or guarded) as that body."""
    blocking = POLICY.replace("action: allow\n    max_rows: 3\n", "action: block\n")
    for policy, expect in ((blocking, b"PGWARDEN BLOCKED STATEMENT"), (POLICY, b"H\x00")):
        (tmp_path / str(len(policy))).mkdir()
        host = Host(tmp_path / str(len(policy)), policy)
        wire = Wire(host)
        wire.login()
        wire.client_sends(query(f"prepare q as {MANY}"))
        wire.server_sends(complete("PREPARE") + ready())
        wire.upstream.take()
        wire.client_sends(parse("execute q") + bind() + execute() + sync())
        sent = wire.upstream.take()
        assert expect in sent, sent
        assert execute() not in sent  # not forwarded unjudged (guarded: it waits first)
