"""Codec tier: framing of client messages, fed whole, byte by byte and split at random."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import FrontendProtocolError, ProtocolError
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.framing import Framer

SAMPLE = [
    m.query("SELECT 1"),
    m.parse(b"s1", "SELECT $1::int"),
    m.bind_missing_statement(b"s1"),
    m.message(ord("E"), b"\x00" + struct.pack("!i", 0)),
    m.SYNC,
    m.FLUSH,
    m.message(ord("d"), b"1\t2\n" * 100),
    m.message(ord("c"), b""),
    m.TERMINATE,
]
STREAM = b"".join(SAMPLE)


def framer(limit: int = 1_000_000) -> Framer:
    return Framer(FrontendProtocolError, large_limit=limit, allowed=c.FRONTEND_TYPES)


def collect(f: Framer, chunks: list[bytes]) -> list[tuple[int, bytes | None, bytes]]:
    out = []
    for chunk in chunks:
        out.extend(f.feed(chunk))
    return out


def whole_messages(items: list[tuple[int, bytes | None, bytes]]) -> list[bytes]:
    """Reassemble streamed pieces so results can be compared across chunkings."""
    result: list[bytes] = []
    partial = b""
    for _kind, body, raw in items:
        if body is None:
            partial += raw
            if len(partial) >= 5 and len(partial) == struct.unpack_from("!I", partial, 1)[0] + 1:
                result.append(partial)
                partial = b""
        else:
            assert not partial
            result.append(raw)
    assert not partial
    return result


def test_whole_stream_gives_each_message_with_its_exact_bytes() -> None:
    items = collect(framer(), [STREAM])
    assert [raw for _, _, raw in items] == SAMPLE
    assert [kind for kind, _, _ in items] == [msg[0] for msg in SAMPLE]
    assert items[0][1] == b"SELECT 1\x00"


def test_byte_by_byte_gives_the_same_messages() -> None:
    items = collect(framer(), [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert whole_messages(items) == SAMPLE


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
def test_random_splits_give_the_same_messages(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert whole_messages(collect(framer(), chunks)) == SAMPLE


LONG = [m.query("SELECT '" + "x" * 200_000 + "'"), m.SYNC, m.query("SELECT 2")]
LONG_STREAM = b"".join(LONG)


@given(st.lists(st.integers(min_value=1, max_value=len(LONG_STREAM) - 1), max_size=12))
def test_a_long_message_split_anywhere_comes_out_whole(cuts: list[int]) -> None:
    """(Copied out of the buffer through a view once it is long.)"""
    points = sorted(set(cuts))
    chunks = [
        LONG_STREAM[a:b] for a, b in zip([0, *points], [*points, len(LONG_STREAM)], strict=True)
    ]
    f = framer()
    items = collect(f, chunks)
    assert [raw for _, _, raw in items] == LONG
    assert items[0][1] == LONG[0][5:] and not f.buffered
    # The buffer is free to grow and shrink again (no view of it is left behind).
    assert list(f.feed(m.SYNC[:2])) == [] and f.buffered == 2
    assert [raw for _, _, raw in f.feed(m.SYNC[2:])] == [m.SYNC] and not f.buffered


def test_copy_data_is_streamed_not_buffered() -> None:
    big = m.message(ord("d"), b"x" * 100_000)
    f = framer(limit=1000)
    first = list(f.feed(big[:50_000]))
    assert first and first[0][1] is None and f.buffered == 0
    rest = list(f.feed(big[50_000:]))
    assert b"".join(raw for _, _, raw in first + rest) == big


def test_oversized_query_is_refused_before_its_body_arrives() -> None:
    header = b"Q" + struct.pack("!I", 2_000_000)
    with pytest.raises(FrontendProtocolError) as err:
        list(framer(limit=1_000_000).feed(header))
    assert err.value.sqlstate == "54000"


def test_small_message_limit_applies_to_sync() -> None:
    with pytest.raises(FrontendProtocolError):
        list(framer().feed(b"S" + struct.pack("!I", 20_000)))


@pytest.mark.parametrize("length", [0, 3])
def test_length_below_four_is_refused(length: int) -> None:
    with pytest.raises(FrontendProtocolError, match="length"):
        list(framer().feed(b"Q" + struct.pack("!I", length)))


def test_unknown_type_is_refused() -> None:
    with pytest.raises(FrontendProtocolError, match="type"):
        list(framer().feed(b"z\x00\x00\x00\x04"))


@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    f = framer(limit=10_000)
    try:
        for kind, body, _raw in f.feed(data):
            if body is None:
                continue
            if kind == ord("P"):
                m.decode_parse(body)
            elif kind == ord("B"):
                m.decode_bind(body)
            elif kind == ord("E"):
                m.decode_execute(body)
            elif kind in b"DC":
                m.decode_target(body, "Describe")
            elif kind == ord("Q"):
                m.query_text(body)
    except ProtocolError:
        pass
