"""The hash chain: canonical form round-trips, links, HMAC, and events orjson refuses."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.chain import GENESIS, HMAC_SHA256, SHA256, Chainer, canonical, record_hash
from proxy.errors import AuditError

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
events = st.dictionaries(
    st.text().filter(lambda k: k not in ("seq", "prev_hash", "chain", "hash")),
    json_values,
    max_size=8,
)


def _seal_one(event: dict[str, Any], key: bytes | None = None) -> bytes:
    event["seq"] = 1
    return Chainer(key).seal([event])


def _strip_hash(line: bytes) -> bytes:
    """The canonical bytes by hand: the line minus ',"hash":"<64 hex>"' and the newline."""
    assert line.endswith(b'"}\n')
    return line[: -len(',"hash":""}\n') - 64] + b"}"


@settings(max_examples=300, deadline=None)
@given(events)
def test_written_line_reparses_to_the_same_canonical_bytes_and_hash(event: dict[str, Any]) -> None:
    line = _seal_one(dict(event))
    parsed = orjson.loads(line)
    assert canonical(parsed) == _strip_hash(line)
    assert hashlib.sha256(_strip_hash(line)).hexdigest() == parsed["hash"]
    assert record_hash(parsed) == parsed["hash"]
    # Parsing and writing again changes nothing: floats and text survive byte for byte.
    assert canonical(orjson.loads(orjson.dumps(parsed))) == canonical(parsed)


@settings(max_examples=100, deadline=None)
@given(events, st.binary(min_size=1, max_size=64))
def test_hmac_chain_needs_the_key(event: dict[str, Any], key: bytes) -> None:
    parsed = orjson.loads(_seal_one(dict(event), key))
    assert parsed["chain"] == HMAC_SHA256
    expected = hmac.new(key, canonical(parsed), "sha256").hexdigest()
    assert parsed["hash"] == expected == record_hash(parsed, key)
    assert record_hash(parsed) != parsed["hash"]


def test_records_link_by_prev_hash_and_continue_from_a_resumed_state() -> None:
    chainer = Chainer()
    batch = [{"seq": n, "type": "query", "statement": f"select {n}"} for n in (1, 2, 3)]
    lines = chainer.seal(batch).splitlines()
    records = [orjson.loads(line) for line in lines]
    assert records[0]["prev_hash"] == GENESIS
    assert [r["prev_hash"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    assert all(r["chain"] == SHA256 for r in records)
    # A writer reopened on these files carries on from the last record.
    resumed = Chainer(None, records[-1]["seq"], records[-1]["hash"])
    nxt = orjson.loads(resumed.seal([{"seq": 4, "type": "query"}]))
    assert nxt["prev_hash"] == records[-1]["hash"]
    # The batch's dicts carry the chain fields too: listeners see what was written.
    assert batch[2]["hash"] == records[2]["hash"]


def test_events_orjson_refuses_are_still_written() -> None:
    event = {"statement": "bad \udcff surrogate", "big": 2**70, 5: "int key", "nan": float("nan")}
    parsed = orjson.loads(_seal_one(event))
    assert parsed["statement"] == "bad ? surrogate"
    assert parsed["big"] == str(2**70)
    assert parsed["5"] == "int key"
    assert parsed["nan"] is None
    assert record_hash(parsed) == parsed["hash"]


def test_a_resubmitted_record_gets_one_fresh_hash() -> None:
    first = orjson.loads(_seal_one({"user": "alice"}))
    again = Chainer(None, 1, first["hash"]).seal([dict(first, seq=2)])
    assert again.count(b'"hash"') == 1
    parsed = orjson.loads(again)
    assert parsed["prev_hash"] == first["hash"] and record_hash(parsed) == parsed["hash"]


def test_editing_any_field_changes_the_hash() -> None:
    parsed = orjson.loads(_seal_one({"user": "alice", "rows": 3, "duration_ms": 1.25}))
    for key, value in (("user", "mallory"), ("rows", 4), ("duration_ms", 1.26)):
        edited = dict(parsed, **{key: value})
        assert record_hash(edited) != parsed["hash"]


def test_unreadable_hmac_key_file_is_a_clear_error(tmp_path: Any) -> None:
    from proxy.audit.chain import load_hmac_key

    with pytest.raises(AuditError, match=r"cannot read audit\.hmac_key_file"):
        load_hmac_key(tmp_path / "missing.key")
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(AuditError, match="is empty"):
        load_hmac_key(empty)
