"""The server→client scanner, from bytes: any chunking gives the same result, limits hold
before allocation, garbage is our protocol error and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import BackendProtocolError
from proxy.wire.backend import SMALL_BODY, BackendScanner
from tests.relay.harness import complete, data_row, error, msg, ready, row_description, split

pytestmark = pytest.mark.filterwarnings("error")


class Recorder:
    def __init__(self, replace: dict[int, bytes] | None = None) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.rows = 0
        self.replace = replace or {}

    def __call__(self, kind: int, body: bytes, rows: int) -> bytes | None:
        self.rows += rows
        if kind != 68:
            self.seen.append((kind, bytes(body)))
        return self.replace.get(kind)


def run(chunks: list[bytes], replace: dict[int, bytes] | None = None) -> tuple[bytes, Recorder]:
    recorder = Recorder(replace)
    scanner = BackendScanner(recorder)
    out = b"".join(scanner.feed(chunk) for chunk in chunks)
    return out, recorder


STREAM = (
    row_description("a", "b")
    + data_row(b"1", b"x")
    + data_row(b"2", b"y" * 300)
    + msg(b"N", b"SNOTICE\x00Mhello\x00\x00")
    + complete("SELECT 2")
    + msg(b"A", struct.pack("!I", 7) + b"chan\x00payload\x00")
    + error("23505", "duplicate key")
    + ready(b"E")
)


def test_whole_stream_passes_through_and_watched_messages_are_seen() -> None:
    out, rec = run([STREAM])
    assert out == STREAM
    assert [chr(k) for k, _ in rec.seen] == ["T", "C", "E", "Z"]
    assert rec.rows == 2


def test_byte_by_byte_is_the_same() -> None:
    whole_out, whole = run([STREAM])
    out, rec = run([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert out == whole_out
    assert rec.seen == whole.seen
    assert rec.rows == whole.rows


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    whole_out, whole = run([STREAM], {67: b"", 69: error("42501", "replaced")})
    out, rec = run(split(STREAM, cuts), {67: b"", 69: error("42501", "replaced")})
    assert out == whole_out
    assert rec.seen == whole.seen
    assert rec.rows == whole.rows


def test_replacement_and_swallowing() -> None:
    out, _ = run([STREAM], {67: b""})
    assert complete("SELECT 2") not in out
    assert out.replace(complete("SELECT 2"), b"") == out


def test_large_passthrough_message_is_streamed_not_buffered() -> None:
    notice = msg(b"N", b"M" + b"x" * (4 << 20) + b"\x00\x00")
    scanner = BackendScanner(Recorder())
    out = []
    for i in range(0, len(notice), 65536):
        out.append(scanner.feed(notice[i : i + 65536]))
        assert scanner.buffered == 0  # every piece is forwarded as it arrives
    assert b"".join(out) == notice


def test_large_watched_message_is_assembled_once() -> None:
    big = error("P0001", "y" * (4 << 20))
    rec = Recorder()
    scanner = BackendScanner(rec)
    forwarded = b""
    for i in range(0, len(big), 65536):
        forwarded += scanner.feed(big[i : i + 65536])
    assert forwarded == big
    assert len(rec.seen) == 1 and rec.seen[0][1] == big[5:]


def test_small_type_over_its_limit_fails_on_the_header() -> None:
    header = b"C" + struct.pack("!I", SMALL_BODY + 5)
    with pytest.raises(BackendProtocolError, match="exceeds"):
        BackendScanner(Recorder()).feed(header)


def test_unknown_type_is_an_error() -> None:
    with pytest.raises(BackendProtocolError, match="invalid message type"):
        BackendScanner(Recorder()).feed(b"\xff\x00\x00\x00\x04")


def test_impossible_length_is_an_error() -> None:
    with pytest.raises(BackendProtocolError, match="invalid message length"):
        BackendScanner(Recorder()).feed(b"D\x00\x00\x00\x02")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_is_our_protocol_error_or_nothing(data: bytes, cuts: list[int]) -> None:
    scanner = BackendScanner(Recorder())
    try:
        for chunk in split(data, cuts):
            scanner.feed(chunk)
    except BackendProtocolError:
        pass
