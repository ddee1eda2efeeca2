"""The lean audit stage writes exactly what the canonical path writes.

Query events are built in one dict display with their keys in canonical order, with
hand-written replacements for ``round(…, 3)``, the ``:06d`` timestamp format and
``Enum.value``. These tests hold the result to the definition: every line equals the one
computed from :func:`proxy.audit.chain.canonical` (sorted-key orjson) and the sha256 chain by
hand, for generated records and generated query events, and a trail written that way
verifies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy import config
from proxy.audit import events as events_module
from proxy.audit.chain import GENESIS, SHA256, Chainer, canonical
from proxy.audit.events import SessionEvents, duration_ms, iso
from proxy.audit.record import QueryRecord
from proxy.audit.trail import AuditTrail
from proxy.audit.verify import verify_trail
from proxy.gate import Gate
from proxy.identity import Identity, IdentitySource
from proxy.policy.decision import Decision, RuleMatch
from proxy.relay.statement import Completion, GuardOutcome, GuardResult, Scope, Statement, Via
from proxy.sql.facts import ParserSettings

# Keys that sort oddly: empty, prefixes of each other, case, NUL and control characters,
# code points on both sides of the surrogate range (UTF-16 would order these differently).
ODD_KEYS = ["", "a", "a\x00", "A", "aa", "b", "é", "\x7f", "\uffff", "\U0001f600", "\ue000"]
keys = st.sampled_from(ODD_KEYS) | st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson refuses those, both paths replace them
    | st.floats()  # NaN and infinities included
    | st.text()  # lone surrogates and control characters included
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4).map(lambda d: dict(sorted(d.items())))
    ),
    max_leaves=24,
)
RESERVED = ("seq", "prev_hash", "chain", "hash")
records = st.dictionaries(keys.filter(lambda k: k not in RESERVED), values, max_size=10)


def reference_lines(events: list[dict[str, Any]], prev: str = GENESIS) -> list[bytes]:
    """The lines the trail must hold, from the definition alone: the canonical form of the
    record with ``prev_hash`` and ``chain``, its sha256, the hash spliced in before ``}``."""
    lines = []
    for event in events:
        record = {k: v for k, v in event.items() if k != "hash"}
        record["prev_hash"] = prev
        record["chain"] = SHA256
        body = canonical(record)
        prev = hashlib.sha256(body).hexdigest()
        lines.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
    return lines


def in_key_order(value: Any) -> Any:
    """``value`` with every dict's keys inserted in sorted order (what the fast path takes)."""
    if isinstance(value, dict):
        ordered = sorted(value.items(), key=lambda item: str(item[0]))
        return {k: in_key_order(v) for k, v in ordered}
    if isinstance(value, list):
        return [in_key_order(v) for v in value]
    return value


def _sealed(events: list[dict[str, Any]]) -> list[bytes]:
    data = Chainer().seal(events)
    return data.splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=5), st.booleans())
def test_sealed_lines_equal_the_canonical_definition(
    batch: list[dict[str, Any]], ordered: bool
) -> None:
    events = [in_key_order(r) if ordered else dict(r) for r in batch]
    for seq, event in enumerate(events, 1):
        event["seq"] = seq
    expected = reference_lines([dict(e) for e in events])
    assert _sealed(events) == expected


# --- query events as the session builds them ---------------------------------------------

GATE = Gate(config.defaults(), None)
TEXTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
    "UPDATE t SET v = 'caf\u00e9 \U0001f600' WHERE k = 2",
    "SELECT 1; SELECT 2",
    'INSERT INTO "we""ird" VALUES (E\'\\x01\\n\', 3)',
    "SELEKT nonsense",
    "CREATE ROLE r PASSWORD 'secret'",
]
FACTS = [GATE.inspect(t.encode(), ParserSettings()) for t in TEXTS]
RULE = RuleMatch("no-writes", "block", "high", "policy.yaml:3")
DECISIONS = [
    None,
    Decision(action="allow", reason="no rule matched"),
    Decision(action="block", rules=(RULE,), intended="block", reason="rule"),
]
identities = st.builds(
    Identity,
    st.text(max_size=8),
    st.text(max_size=8),
    st.text(max_size=8),
    client_addr=st.sampled_from(["", "10.0.0.1", "::1", "unix"]),
    client_port=st.none() | st.integers(0, 65535),
    session_id=st.text(max_size=10),
)
end_identities = st.one_of(
    st.just(("", None)),
    st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(list(IdentitySource))),
)


@st.composite
def completions(draw: st.DrawFn) -> Completion:
    index = draw(st.integers(0, len(TEXTS) - 1))
    statement = Statement(
        TEXTS[index],
        FACTS[index],
        draw(st.sampled_from(DECISIONS)),
        name=draw(st.sampled_from(["", "s1", "n\u00e9"])),
    )
    started_ns = draw(st.integers(0, 10**15))
    error = draw(
        st.none()
        | st.fixed_dictionaries({"M": st.text(max_size=20)}, optional={"C": st.text(max_size=5)})
    )
    guard = draw(
        st.none()
        | st.builds(
            GuardResult,
            st.integers(0, 10),
            st.just("cap"),
            st.sampled_from(list(GuardOutcome)),
            st.none() | st.integers(0, 10),
        )
    )
    return Completion(
        draw(st.none() | st.just(statement)),
        draw(st.sampled_from(list(Via))),
        draw(st.floats(0, 4e9)),
        started_ns,
        started_ns + draw(st.integers(0, 10**12)),
        tag=draw(st.sampled_from(["", "SELECT 1", "UPDATE 3", "INSERT 0 1"])),
        error=error,
        rows=draw(st.none() | st.integers(0, 2**70)),  # 2**70: orjson refuses, str() kept
        index=draw(st.sampled_from([-1, -1, 0, 1])),
        portal=draw(st.sampled_from(["", "p\u00e9"])),
        params=draw(st.none() | st.lists(st.none() | st.text(max_size=6), max_size=3)),
        refusal=draw(st.none() | st.sampled_from(DECISIONS[1:])),
        suspended=draw(st.booleans()),
        tx_after=draw(st.sampled_from([ord("I"), ord("T"), ord("E")])),
        scope=draw(st.sampled_from(list(Scope))),
        guard=guard,
    )


@settings(max_examples=300, deadline=None)
@given(identities, end_identities, st.lists(completions(), min_size=1, max_size=4))
def test_query_events_seal_to_the_canonical_lines(
    identity: Identity, end: tuple[str, IdentitySource | None], done: list[Completion]
) -> None:
    if end[0]:
        identity = Identity(
            identity.user,
            identity.database,
            identity.application_name,
            session_id=identity.session_id,
            end_identity=end[0],
            identity_source=end[1],
        )
    builder = SessionEvents("proxy-\u00e9", GATE, identity)
    builder.backend_pid = 4242
    events = [builder.statement(d, None) for d in done]
    for seq, event in enumerate(events, 1):
        event["seq"] = seq
    expected = reference_lines([dict(e) for e in events])
    assert _sealed(events) == expected
    # Listeners get the record as written.
    for event, line in zip(events, expected, strict=True):
        assert canonical(orjson.loads(line)) == canonical(event)


ODD = Decision(action="block", rules=(RuleMatch("r\ud800", "block", "high", "p:1"),))
odd_texts = st.sampled_from(["", "alice", "caf\u00e9", "\ud800x", 'a"b\\c\n\x00'])
lean_identities = st.builds(
    Identity,
    odd_texts,
    odd_texts,
    odd_texts,
    client_addr=st.sampled_from(["", "10.0.0.1", "::1", "unix", "\udcff"]),
    client_port=st.none() | st.integers(0, 65535),
    session_id=odd_texts,
)


@st.composite
def common_completions(draw: st.DrawFn) -> Completion:
    """The completions the lean record takes: ran, no error, no bound values kept."""
    index = draw(st.integers(0, len(TEXTS) - 1))
    statement = Statement(
        TEXTS[index],
        FACTS[index],
        draw(st.sampled_from([*DECISIONS, ODD])),
        name=draw(st.sampled_from(["", "s1", "n\u00e9", "\ud800"])),
    )
    started_ns = draw(st.integers(0, 10**15))
    return Completion(
        statement,
        draw(st.sampled_from(list(Via))),
        draw(st.floats(0, 4e9)),
        started_ns,
        started_ns + draw(st.integers(0, 10**12)),
        tag=draw(st.sampled_from(["", "SELECT 1", "UPDATE 3", "INSERT 0 1", "\ud800"])),
        rows=draw(st.none() | st.integers(0, 2**70)),
        index=draw(st.sampled_from([-1, -1, 0, 1])),
        portal=draw(st.sampled_from(["", "p\u00e9", "\ud800"])),
        tx_after=draw(st.sampled_from([ord("I"), ord("T"), ord("E")])),
        scope=draw(st.sampled_from(list(Scope))),
        params=draw(st.none() | st.lists(bound_values, max_size=3)),
    )


bound_values = (
    st.none()
    | st.text(max_size=6)
    | st.sampled_from(["\ud800", "base64:AAE="])
    | st.fixed_dictionaries(
        {"format": st.sampled_from(["text", "binary"]), "length": st.integers(0, 99)},
        optional={"hmac": st.text(max_size=4)},
    )
)


@settings(max_examples=400, deadline=None)
@given(
    lean_identities,
    end_identities,
    st.none() | st.integers(0, 2**31),
    st.lists(common_completions() | completions(), min_size=1, max_size=6),
    st.sampled_from([None, "I", "T", "E"]),
)
def test_lean_records_seal_to_the_dict_paths_lines(
    identity: Identity,
    end: tuple[str, IdentitySource | None],
    pid: int | None,
    done: list[Completion],
    tx_status: str | None,
) -> None:
    """The lean record (bytes around the chain's fields) against the dict the canonical path
    seals: the same lines, and the same record for readers."""
    if end[0]:
        identity = dataclasses.replace(identity, end_identity=end[0], identity_source=end[1])
    lean = SessionEvents("proxy-\u00e9", GATE, identity)
    plain = SessionEvents("proxy-\u00e9", GATE, identity)
    lean.backend_pid = plain.backend_pid = pid
    records = [lean.record(d, tx_status) for d in done]
    dicts = [plain.statement(d, tx_status) for d in done]
    for seq, (record, event) in enumerate(zip(records, dicts, strict=True), 1):
        record["seq"] = event["seq"] = seq
    assert Chainer().seal(records) == Chainer().seal(dicts)
    assert lean.statements == plain.statements == len(done)
    for record, event in zip(records, dicts, strict=True):
        assert all(key in record for key in event)  # (before as_dict() fills the record in)
        assert (record.as_dict() if isinstance(record, QueryRecord) else record) == event


def test_the_common_statement_takes_the_lean_record_and_a_change_falls_back() -> None:
    builder = SessionEvents("p", GATE, Identity("alice", "app", "psql", "10.0.0.1", 5432, "s1"))
    builder.backend_pid = 77
    statement = Statement(TEXTS[0], FACTS[0], None)
    done = Completion(statement, Via.EXTENDED, 1.5, 0, 1500, "SELECT 1", rows=1)
    record = builder.record(done)
    assert isinstance(record, QueryRecord)
    assert record.get("type") == "query" and record["class"] == "read"
    assert record.get("error") is None and record.get("hash") is None and "hash" not in record
    assert record["decision"] == {
        "action": "allow",
        "intended": "allow",
        "mode": "enforce",
        "rules": [],
    }
    twin = builder.statement(done)
    changed = builder.record(done)
    assert isinstance(changed, QueryRecord)
    changed["dispatch"] = 9
    twin_changed = dict(twin, dispatch=9)
    batch: list[Any] = [record, changed]
    expected: list[Any] = [twin, twin_changed]
    for seq, (a, b) in enumerate(zip(batch, expected, strict=True), 1):
        a["seq"] = b["seq"] = seq
    assert Chainer().seal(batch) == Chainer().seal(expected)
    assert changed.dirty and changed["dispatch"] == 9 and changed["hash"] == twin_changed["hash"]
    assert record["hash"] == twin["hash"] and record.as_dict() == twin


def test_a_query_record_reads_and_changes_like_its_dict() -> None:
    builder = SessionEvents("p", GATE, Identity("alice", "app", "psql", "10.0.0.1", 5432, "s1"))
    statement = Statement(TEXTS[0], FACTS[0], None)
    done = Completion(statement, Via.SIMPLE, 1.5, 0, 1500, "SELECT 1", rows=1)
    record, twin = builder.record(done), builder.statement(done)
    assert isinstance(record, QueryRecord)
    for key in twin:
        assert key in record and record[key] == twin[key] and record.get(key) == twin.get(key)
    assert "nope" not in record and record.get("nope", 7) == 7
    with pytest.raises(KeyError):
        record["nope"]
    record["seq"] = 3
    assert not record.dirty and record["seq"] == 3 and record.as_dict()["seq"] == 3
    del record["portal"]
    assert record.dirty and "portal" not in record
    with pytest.raises(KeyError):
        record["portal"]
    with pytest.raises(KeyError):
        del record["hash"]
    record["hash"] = "h"
    assert record["hash"] == "h" and record.as_dict()["hash"] == "h"
    del record["hash"]
    assert "hash" not in record and record.get("hash") is None


def test_a_plain_query_event_is_built_in_canonical_order() -> None:
    """The gain depends on it: the common event is in canonical order when sealed."""
    builder = SessionEvents("p", GATE, Identity("alice", "app", "psql", "10.0.0.1", 5432, "s1"))
    statement = Statement(TEXTS[0], FACTS[0], None)
    event = builder.statement(Completion(statement, Via.SIMPLE, 1.5, 0, 1500, "SELECT 1"))
    event["seq"] = 1
    event["prev_hash"] = GENESIS
    event["chain"] = SHA256
    assert list(event) == sorted(event)
    assert event["duration_ms"] == 0.002 and event["protocol"] == "simple"


def test_a_decisions_audit_object_is_made_once_and_not_carried_by_copies() -> None:
    decision = Decision(action="flag", rules=(RULE,), mode="monitor", intended="block")
    first = decision.as_audit()
    assert first is decision.as_audit()
    assert first == {
        "action": "flag",
        "intended": "block",
        "mode": "monitor",
        "rules": [{"id": "no-writes", "action": "block", "severity": "high"}],
    }
    twin = Decision(action="flag", rules=(RULE,), mode="monitor", intended="block")
    assert twin == decision and hash(twin) == hash(decision)  # the cache is not compared
    changed = dataclasses.replace(decision, action="block")
    assert changed.as_audit()["action"] == "block"  # a copy does not inherit the answer
    assert pickle.loads(pickle.dumps(decision)).as_audit() == first


def test_events_sharing_a_decision_that_needs_cleaning_seal_alike() -> None:
    """Query events share their decision's audit dict: the trail's fallback for what orjson
    refuses (a lone surrogate here) must clean a copy, never the shared dict."""
    odd = Decision(action="block", rules=(RuleMatch("r\ud800", "block", "high", "p:1"),))
    shared = odd.as_audit()
    builder = SessionEvents("p", GATE, Identity("alice", "app", "psql"))
    statement = Statement(TEXTS[0], FACTS[0], odd)
    events = [
        builder.statement(Completion(statement, Via.SIMPLE, 1.5 + n, n, n + 1500, "SELECT 1"))
        for n in range(3)
    ]
    for seq, event in enumerate(events, 1):
        event["seq"] = seq
    assert all(event["decision"] is shared for event in events)
    expected = reference_lines([dict(e) for e in events])
    assert _sealed(events) == expected
    assert odd.as_audit() is shared and shared["rules"][0]["id"] == "r\ud800"
    assert all(b'"rules":[{"action":"block","id":"r?"' in line for line in expected)


# --- the pieces that replaced generic formatting -----------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2**60) | st.integers(0, 10**7).map(lambda n: n * 1000 + 500))
def test_duration_ms_is_round_to_three_places(elapsed_ns: int) -> None:
    expected = round(elapsed_ns / 1e6, 3)
    assert repr(duration_ms(elapsed_ns)) == repr(expected)


def test_duration_ms_near_every_tie_of_the_first_million() -> None:
    for base in range(0, 10**6, 1000):
        for elapsed in (base + 499, base + 500, base + 501, base, base + 999):
            assert repr(duration_ms(elapsed)) == repr(round(elapsed / 1e6, 3))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0, 4e9, allow_nan=False))
def test_iso_is_the_strftime_form_with_six_digit_microseconds(ts: float) -> None:
    second = int(ts)
    prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    micros = int((ts - second) * 1e6)
    assume(micros < 10**6)
    assert iso(ts) == f"{prefix}.{micros:06d}Z"


def test_enum_values_are_the_members_values() -> None:
    for member in (*Via, *Scope):
        assert events_module._value_of(member) == (member.value, orjson.dumps(member.value))


# --- a whole trail ---------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(completions(), min_size=1, max_size=12))
def test_a_trail_of_lean_events_verifies(tmp_path: Path, done: list[Completion]) -> None:
    directory = tmp_path / f"trail-{len(list(tmp_path.iterdir()))}"
    cfg = config.defaults().replace(audit__dir=str(directory), audit__fsync="none")
    trail = AuditTrail(cfg, "lean")
    trail.open()
    builder = SessionEvents("lean", GATE, Identity("alice", "app", "psql", session_id="s"))
    written: list[dict[str, Any]] = []
    trail.add_listener(written.extend)
    for completion in done:
        trail.submit(builder.statement(completion))
    trail.close()
    result = verify_trail(directory)
    assert result.ok, result.problem
    lines = (directory / "audit.jsonl").read_bytes().splitlines(keepends=True)
    mine = written[-len(done) :]
    assert lines[-len(done) :] == reference_lines(mine, mine[0]["prev_hash"])
