"""SCRAM against the suite's PostgreSQL: the same secrets, bound logins over TLS, the
verifier-compatible upstream login, and the passthrough channel-binding matrix."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from proxy.auth import passthrough, scram
from proxy.auth.scram import ScramSecret
from proxy.auth.scram_client import ChannelBinding, ScramClient
from proxy.auth.scram_server import ScramServer
from proxy.config import Upstream
from proxy.errors import AuthenticationError
from proxy.tls.contexts import upstream_context
from proxy.tls.settings import UpstreamMode, UpstreamTLS
from proxy.tls.upstream import UpstreamLink, open_upstream
from proxy.wire import messages as m
from tests.support import rawpg
from tests.support.pgcluster import PASSWORDS, PgServer, needs_managed_cluster
from tests.tls.pgproto import PgClient

pytestmark = needs_managed_cluster


def _secret_of(pg: PgServer, role: str) -> ScramSecret:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        return ScramSecret.parse(row.fetchone()[0])  # type: ignore[index]


def _code(body: bytes) -> int:
    return int(struct.unpack_from("!i", body, 0)[0])


async def _link(pg: PgServer, tls: bool) -> UpstreamLink[PgClient]:
    if tls:
        assert pg.tls is not None
        settings = UpstreamTLS(UpstreamMode.VERIFY_FULL, ca_file=str(pg.tls.ca_file))
        context = upstream_context(settings)
    else:
        settings, context = UpstreamTLS(), None
    async with asyncio.timeout(10):
        return await open_upstream(PgClient, Upstream(pg.host, pg.port), settings, context)


async def _login(
    link: UpstreamLink[PgClient],
    user: str,
    client: ScramClient,
    offer: Callable[[bytes], bytes] = lambda body: body,
) -> list[tuple[bytes, bytes]]:
    """A SCRAM login; ``offer`` may rewrite the AuthenticationSASL body first (what a
    relaying proxy does). Returns the messages after the exchange (up to Z or E)."""
    proto = link.protocol
    proto.send(rawpg.startup({"user": user, "database": "postgres"}))
    body = (await proto.until(b"R"))[-1][1]
    assert _code(body) == 10, body
    mechanisms = m.sasl_mechanisms(offer(body))
    proto.send(client.initial_response(mechanisms))
    body = (await proto.until(b"R"))[-1][1]
    return await _continue(proto, client, body)


async def _continue(proto: PgClient, client: ScramClient, body: bytes) -> list[tuple[bytes, bytes]]:
    if _code(body) != 11:
        raise AssertionError(body)
    proto.send(client.continue_response(body[4:]))
    rest = await proto.until(b"Z")
    final = next(b for k, b in rest if k == b"R" and _code(b) == 12)
    client.final(final[4:])
    return rest


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_secrets_match_postgres_derivation(pg: PgServer) -> None:
    stored = _secret_of(pg, "alice")
    assert scram.make_secret("alice-pw", stored.iterations, stored.salt) == stored
    tricky = "\u2168-p\u00e4ss\u00adw\u00f6rd"  # NFKC and a mapped-to-nothing soft hyphen
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS scram_tricky")
        conn.execute(
            "SET password_encryption = 'scram-sha-256'; "
            f"CREATE ROLE scram_tricky LOGIN PASSWORD {pgquote(tricky)}"
        )
    try:
        theirs = _secret_of(pg, "scram_tricky")
        assert scram.make_secret(tricky, theirs.iterations, theirs.salt) == theirs
        assert scram.make_secret("IX-p\u00e4ssw\u00f6rd", theirs.iterations, theirs.salt) == theirs
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("DROP ROLE scram_tricky")


def pgquote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_password_login_plain_and_bound_over_tls(pg: PgServer) -> None:
    if pg.tls is None:
        pytest.skip("no TLS on the suite's server")

    async def main() -> None:
        plain = await _link(pg, tls=False)
        client = ScramClient(password=PASSWORDS["alice"])
        assert (await _login(plain, "alice", client))[-1][0] == b"Z"
        assert client.mechanism == "SCRAM-SHA-256"
        await plain.protocol.close()

        tls = await _link(pg, tls=True)
        bound = ScramClient(
            password=PASSWORDS["tess"],
            server_cert=tls.server_certificate,
            channel_binding="require",
        )
        assert (await _login(tls, "tess", bound))[-1][0] == b"Z"
        assert bound.mechanism == "SCRAM-SHA-256-PLUS"
        assert (
            await tls.protocol.scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            == "t"
        )
        await tls.protocol.close()

    _run(main())


def test_wrong_password_is_refused_by_the_server(pg: PgServer) -> None:
    async def main() -> None:
        link = await _link(pg, tls=False)
        proto = link.protocol
        client = ScramClient(password="wrong")
        proto.send(rawpg.startup({"user": "alice", "database": "postgres"}))
        body = (await proto.until(b"R"))[-1][1]
        proto.send(client.initial_response(m.sasl_mechanisms(body)))
        body = (await proto.until(b"R"))[-1][1]
        proto.send(client.continue_response(body[4:]))
        error = (await proto.until(b"E"))[-1][1]
        assert b"C28P01" in error and b'password authentication failed for user "alice"' in error
        await proto.close()

    _run(main())


def test_upstream_login_with_the_clients_own_proof(pg: PgServer) -> None:
    """auth.mode proxy with the server's own secret in the users file: pgwarden checks the
    client's proof, recovers its ClientKey and logs in upstream without knowing the password."""
    secret = _secret_of(pg, "alice")
    server = ScramServer("alice", secret)
    client = ScramClient(password=PASSWORDS["alice"])
    offer = server.sasl_request()[5:]
    challenge = server.initial_response(client.initial_response(m.sasl_mechanisms(offer))[5:])
    server.final_response(client.continue_response(challenge[9:])[5:])
    keys = server.upstream_keys()

    async def main() -> None:
        link = await _link(pg, tls=False)
        assert (await _login(link, "alice", ScramClient(keys=keys)))[-1][0] == b"Z"
        assert await link.protocol.scalar("select current_user") == "alice"
        await link.protocol.close()
        # a users-file secret with another salt cannot be passed through: clear error
        other = scram.make_secret(PASSWORDS["alice"])
        other_keys = scram.keys_from_password(PASSWORDS["alice"], other.salt, other.iterations)
        link = await _link(pg, tls=False)
        with pytest.raises(AuthenticationError, match="differs from pgwarden's"):
            await _login(link, "alice", ScramClient(keys=other_keys))
        await link.protocol.close()

    _run(main())


@pytest.mark.parametrize(
    ("binding", "works"),
    [("prefer", False), ("require", False), ("disable", True)],
)
def test_passthrough_matrix_with_tls_on_both_legs(
    pg: PgServer, binding: ChannelBinding, works: bool
) -> None:
    """Relaying SCRAM when the client also uses TLS (to pgwarden): only
    channel_binding=disable logs in. pgwarden strips -PLUS; libpq's default (prefer) then
    says "y" and the server, which offers binding over TLS, calls that a downgrade."""
    if pg.tls is None:
        pytest.skip("no TLS on the suite's server")

    async def main() -> None:
        link = await _link(pg, tls=True)
        # The client's TLS peer is pgwarden; any certificate other than the server's would
        # do, and its binding never reaches the server because -PLUS is stripped.
        assert pg.tls is not None
        pgwarden_cert = ssl.PEM_cert_to_DER_cert(pg.tls.client_cert.read_text())
        client = ScramClient(
            password=PASSWORDS["tess"], server_cert=pgwarden_cert, channel_binding=binding
        )
        proto = link.protocol
        proto.send(rawpg.startup({"user": "tess", "database": "postgres"}))
        body = (await proto.until(b"R"))[-1][1]
        assert b"SCRAM-SHA-256-PLUS" in body  # the server offers binding over TLS
        relayed = passthrough.client_offer(body)[5:]
        assert b"SCRAM-SHA-256-PLUS" not in relayed
        if binding == "require":
            with pytest.raises(AuthenticationError, match="channel binding is required"):
                client.initial_response(m.sasl_mechanisms(relayed))
            await proto.close()
            return
        proto.send(client.initial_response(m.sasl_mechanisms(relayed)))
        reply = (await proto.until(b"R") if works else await proto.until(b"E"))[-1][1]
        if works:
            await _continue(proto, client, reply)
        else:
            assert b"SCRAM channel binding negotiation error" in reply and b"C28000" in reply
            explained = passthrough.explain_error(reply)
            assert explained is not None and b"channel_binding=disable" in explained
        await proto.close()

    _run(main())
