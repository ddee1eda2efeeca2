"""Connection startup: protocol versions, parameters, SSL/GSSENC negotiation, replication."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import Target, events_of, unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def _startup(target: Target, minor: int, extra: dict[str, str] | None = None) -> list[rawpg.Msg]:
    with target.raw(login=False) as conn:
        conn.send(
            rawpg.startup(
                {"user": "postgres", "database": "postgres", **(extra or {})}, minor=minor
            )
        )
        msgs = conn.recv_until("Z")
        answer = conn.simple("select 41 + 1")
        assert [m.describe() for m in answer if m.type in "DCZ"] == [
            ("D", ("42",)),
            ("C", "SELECT 1"),
            ("Z", "I"),
        ], answer
        return msgs


def _check_negotiation(msgs: list[rawpg.Msg], requested: int, unknown: list[str]) -> int:
    """Assert NegotiateProtocolVersion (if any) came first; return the negotiated minor."""
    seq = rawpg.types(msgs)
    assert "E" not in seq, f"startup failed: {[m.fields() for m in msgs if m.type == 'E']}"
    negotiated = requested
    if "v" in seq:
        assert seq.index("v") == 0, f"NegotiateProtocolVersion must precede auth: {seq}"
        assert seq.count("v") == 1, seq
        negotiated, options = msgs[0].negotiate()
        assert sorted(options) == sorted(unknown), f"unrecognised options reported: {options}"
        assert negotiated < requested or options, "a 'v' that changes nothing"
    else:
        assert not unknown, f"unknown options {unknown} not reported in NegotiateProtocolVersion"
    assert negotiated in (0, 2), f"negotiated 3.{negotiated}: only 3.0 and 3.2 exist"
    keys = [m for m in msgs if m.type == "K"]
    assert len(keys) == 1, f"one BackendKeyData expected: {seq}"
    secret = keys[0].key_data()[1]
    want = 4 if negotiated == 0 else 32
    assert len(secret) == want, (
        f"protocol 3.{negotiated} negotiated but BackendKeyData secret is {len(secret)} bytes"
    )
    return negotiated


def test_protocol_3_0(target: Target) -> None:
    msgs = _startup(target, 0)
    assert rawpg.types(msgs)[0] == "R", "3.0 needs no negotiation"
    assert _check_negotiation(msgs, 0, []) == 0


def test_protocol_3_2(target: Target) -> None:
    """PG15-17 answer 3.2 with NegotiateProtocolVersion(3.0), PG18 accepts it; the proxy
    relays or offers 3.2."""
    negotiated = _check_negotiation(_startup(target, 2), 2, [])
    if target.name == "direct":
        with target.connect() as conn:
            major = conn.info.server_version // 10000
        assert negotiated == (2 if major >= 18 else 0), (
            f"PostgreSQL {major} negotiated 3.{negotiated}"
        )


@pytest.mark.parametrize(
    ("minor", "extra", "unknown"),
    [(3, {}, []), (9999, {"_pq_.foo": "bar"}, ["_pq_.foo"]), (0, {"_pq_.foo": "1"}, ["_pq_.foo"])],
    ids=["3.3", "3.9999+_pq_.foo", "3.0+_pq_.foo"],
)
def test_protocol_negotiated_down(
    target: Target, minor: int, extra: dict[str, str], unknown: list[str]
) -> None:
    msgs = _startup(target, minor, extra)
    assert rawpg.types(msgs)[0] == "v", f"expected NegotiateProtocolVersion first: {msgs[:2]}"
    _check_negotiation(msgs, minor, unknown)


def test_protocol_2_refused(target: Target) -> None:
    with target.raw(login=False) as conn:
        conn.send(rawpg.startup({"user": "postgres"}, major=2, minor=0))
        got = conn.wait_closed(5)
    assert b"R\x00" not in got[:2], f"protocol 2.0 must not be authenticated: {got[:100]!r}"
    with target.raw() as other:
        assert rawpg.types(other.simple("select 1")) == "TDCZ"


def test_startup_params_forwarded(target: Target) -> None:
    app = unique("startup_params")
    with target.connect(
        application_name=app, options="-c search_path=pg_catalog,public -c statement_timeout=4321"
    ) as conn:
        assert conn.execute("show application_name").fetchone() == (app,)
        assert conn.execute("show search_path").fetchone() == ("pg_catalog,public",)
        assert conn.execute("show statement_timeout").fetchone() == ("4321ms",)
    if target.proxy is not None:
        start = wait_events(target.proxy, 1, "session_start", application_name=app)[0]
        assert start["user"] == "postgres" and start["database"] == "postgres", start
        assert start["protocol_version"] in ("3.0", 196608, "3", 3.0), start["protocol_version"]
        assert start["tls"] is False
        assert isinstance(start["backend_pid"], int) and start["backend_pid"] > 0


def test_large_startup_option(target: Target) -> None:
    """A ~4 KB startup packet is larger than a typical first read and must be accepted."""
    value = "x" * 4000
    with target.raw(extra={"options": f"-c pgwarden_test.big={value}"}) as conn:
        rows = [m.row() for m in conn.simple("show pgwarden_test.big") if m.type == "D"]
    assert rows == [[value]]


# The suite's PostgreSQL runs with ssl=on (it answers 'S'); the shared proxy has
# client_tls.mode=disable. These two describe that proxy, so they are proxy-only.


def test_ssl_request_answered_n(proxy: Any) -> None:
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.send(rawpg.ssl_request())
        assert conn.recv_bytes(1, 5) == b"N"
        conn.login()
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"


def test_direct_postgres_answers_s(pg: Any) -> None:
    """The other half: the suite's server does offer TLS (so TLS tests exercise it)."""
    if pg.tls is None:
        pytest.skip(
            "the suite's server runs without TLS (not started by the suite, or built without it)"
        )
    with rawpg.RawConn(pg.host, pg.port) as conn:
        conn.send(rawpg.ssl_request())
        assert conn.recv_bytes(1, 5) == b"S"


def test_sslmode_prefer_works_require_fails(proxy: Any) -> None:
    with psycopg.connect(proxy.dsn() + "?sslmode=prefer", connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(proxy.dsn() + "?sslmode=require", connect_timeout=5)
    assert time.monotonic() - started < 4, "sslmode=require must fail at once, not time out"
    assert "SSL" in str(err.value), str(err.value)


def test_bytes_after_ssl_request_close_connection(target: Target, pg: Any) -> None:
    """Plaintext pipelined behind SSLRequest may be injected by a MITM (CVE-2021-3935)."""
    with target.raw(login=False) as conn:
        conn.send(rawpg.ssl_request() + rawpg.startup({"user": "postgres"}))
        if not target.is_proxy and pg.tls is not None:
            # The suite's PostgreSQL has ssl=on: it answers 'S' and then waits for a TLS
            # ClientHello (its buffered-plaintext check runs after the handshake); the
            # plaintext startup is never served either way.
            assert conn.recv_bytes(1, 5) == b"S"
            with pytest.raises((rawpg.Timeout, rawpg.Closed)):
                conn.recv_bytes(1, 1)
            return
        got = conn.wait_closed(5)
    assert got[:1] in (b"", b"N", b"E"), f"unexpected answer to SSLRequest: {got[:40]!r}"
    rest = got[1:] if got[:1] == b"N" else got  # refusing before answering 'N' is fine too
    assert not rest.startswith(b"R"), f"startup after SSLRequest must not be served: {rest!r}"
    if rest:
        assert rest[:1] == b"E", f"only an ErrorResponse may follow: {rest[:60]!r}"
    with target.raw() as other:
        assert rawpg.types(other.simple("select 1")) == "TDCZ"


def test_gssenc_then_ssl_then_startup(proxy: Any) -> None:
    """libpq with a Kerberos ticket sends GSSENCRequest, then SSLRequest, on one socket.

    (PostgreSQL 15 built with GSSAPI answers 'G' here, so this is a proxy-only test.)
    """
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.send(rawpg.gssenc_request())
        assert conn.recv_bytes(1, 5) == b"N", "the proxy cannot do GSS encryption"
        conn.send(rawpg.ssl_request())
        assert conn.recv_bytes(1, 5) == b"N", "TLS is not configured on this proxy"
        conn.login()
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"


def test_psycopg_gssencmode_prefer(proxy: Any) -> None:
    with psycopg.connect(
        proxy.dsn(), gssencmode="prefer", sslmode="prefer", connect_timeout=5
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_replication_connection_refused(proxy: Any) -> None:
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.send(
            rawpg.startup({"user": "postgres", "database": "postgres", "replication": "database"})
        )
        msgs = conn.recv_quiet(1.0)
        errors = [m for m in msgs if m.type == "E"]
        assert errors, f"replication connection was not refused: {rawpg.types(msgs)}"
        text = errors[0].fields().get("M", "")
        assert "replication" in text.lower(), f"error should say why: {errors[0].fields()}"
        assert errors[0].fields().get("S") == "FATAL", errors[0].fields()
        conn.wait_closed(5)
    assert not [
        e for e in events_of(proxy, "query") if e.get("statement", "").startswith("IDENTIFY_SYSTEM")
    ]
    with pytest.raises(psycopg.OperationalError, match=r"(?i)replication"):
        psycopg.connect(proxy.dsn(), replication="database", connect_timeout=5)
