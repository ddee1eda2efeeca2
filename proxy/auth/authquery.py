"""``auth_query`` (PgBouncer's idea): a user's secret looked up on the server itself.

Instead of (or after) the users file, pgwarden connects to the server as ``auth.auth_user``
(its password from ``auth.passfile``, over the upstream TLS settings like every session),
runs ``auth.auth_query`` with the user name as ``$1`` (by default PgBouncer's
``SELECT usename, passwd FROM pg_shadow WHERE usename=$1``) and uses the second column as
the user's SCRAM or md5 secret. A user the query does not return, or returns without a
password, gets PostgreSQL's mock exchange and fails at the password, so nobody learns which
roles exist. Results (found or not) are kept ``auth.auth_query_cache`` seconds, and
concurrent logins of one user share one lookup.

A lookup that cannot be made (server unreachable, auth_user refused, a query that fails or
does not return two columns) is an :class:`AuthQueryError`: the client gets a FATAL saying
pgwarden could not check its password, the operator's log the reason.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.auth.password import Verifier, parse_verifier
from proxy.auth.scram_client import ScramClient
from proxy.errors import AuthenticationError, ProtocolError, UpstreamError
from proxy.relay.handshake import AuthRelay, AuthStep, Login
from proxy.tls.upstream import UpstreamLink
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.framing import Framer

logger = logging.getLogger("pgwarden.auth")

APPLICATION_NAME = "pgwarden auth_query"
_H = struct.Struct("!h")
_I = struct.Struct("!i")
_MESSAGE_LIMIT = 1 << 20
_CACHE_LIMIT = 10_000

Connect = Callable[[Callable[[], asyncio.Protocol]], Awaitable[UpstreamLink[asyncio.Protocol]]]
PasswordFor = Callable[[str, str], str | None]  # (database, user) → auth.passfile password


class AuthQueryError(UpstreamError):
    """The lookup could not be made (the reason is for the operator's log)."""

    sqlstate = c.SQLSTATE_CONNECTION_FAILURE


@dataclass(frozen=True, slots=True)
class AuthQuerySettings:
    query: str
    auth_user: str
    dbname: str  # '' → the client's database
    cache_seconds: float
    timeout: float


def _bind_one_text(value: str) -> bytes:
    raw = value.encode()
    body = b"\x00\x00" + _H.pack(0) + _H.pack(1) + _I.pack(len(raw)) + raw + _H.pack(0)
    return m.message(ord("B"), body)


def query_messages(query: str, user: str) -> bytes:
    """Parse, Bind (``$1`` = the user, as text), Execute, Sync: the user name is a parameter,
    never spliced into the SQL."""
    return (
        m.parse(b"", query)
        + _bind_one_text(user)
        + m.message(ord("E"), b"\x00" + _I.pack(0))
        + m.message(ord("S"), b"")
    )


def decode_row(body: bytes) -> list[bytes | None]:
    (count,) = _H.unpack_from(body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(count):
        (size,) = _I.unpack_from(body, pos)
        pos += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + size])
            pos += size
    return out


class _Lookup(asyncio.Protocol):
    """One connection: log in as auth_user, run the query, collect the first row."""

    def __init__(self, login: Login, password: str | None, query: str, user: str) -> None:
        self._login = login
        self._password = password
        self._query = query
        self._user = user
        self._framer = Framer(ProtocolError, large_limit=_MESSAGE_LIMIT, small_limit=_MESSAGE_LIMIT)
        self._relay: AuthRelay | None = None
        self._ready = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[list[bytes | None] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._row: list[bytes | None] | None = None

    def start(self, transport: asyncio.Transport, server_cert: bytes | None) -> None:
        self.transport = transport
        password = self._password
        client = ScramClient(password=password, server_cert=server_cert) if password else None
        self._relay = AuthRelay(self._login, local=True, upstream_login=client, password=password)
        transport.write(self._login.upstream_packet())

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(AuthQueryError(reason))
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            for kind, body, _raw in self._framer.feed(data):
                assert body is not None
                self._message(kind, body)
        except (ProtocolError, AuthenticationError, struct.error, ValueError) as exc:
            self.fail(f"as {self._login.user}: {exc}")

    def _message(self, kind: int, body: bytes) -> None:
        transport, relay = self.transport, self._relay
        assert transport is not None and relay is not None
        if not self._ready:
            _out, step = relay.on_message(kind, body)
            if step is AuthStep.TO_SERVER:
                transport.write(relay.to_server)
            elif step is AuthStep.FAILED:
                self.fail(
                    f"the server refused auth.auth_user {self._login.user}: "
                    f"{relay.failure.get('M', '')}"
                )
            elif step is AuthStep.READY:
                self._ready = True
                transport.write(query_messages(self._query, self._user))
            return
        if kind == ord("D") and self._row is None:
            self._row = decode_row(body)
        elif kind == ord("E"):
            self.fail(f"auth.auth_query failed: {m.decode_fields(body).get('M', '')}")
        elif kind == ord("Z") and not self.done.done():
            self.done.set_result(self._row)
            transport.write(m.TERMINATE)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"the server closed the connection ({exc or 'end of stream'})")


class AuthQuery:
    """Looks secrets up on the server (one per server process, shared by the sessions)."""

    def __init__(
        self,
        settings: AuthQuerySettings,
        connect: Connect,
        password_for: PasswordFor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._connect = connect
        self._password_for = password_for
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Verifier | None]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[Verifier | None]] = {}

    def forget(self) -> None:
        """Drop the cached answers (a reload: the operator may have changed a password)."""
        self._cache.clear()

    async def lookup(self, database: str, user: str) -> Verifier | None:
        """The user's secret, or None (no such user, no password, an unusable secret)."""
        key = (self.settings.dbname or database, user)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Verifier | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            verifier = await self._ask(*key)
        except BaseException as exc:
            # Logins sharing this lookup get its error; a cancelled one (its session went
            # away) must not cancel theirs.
            shared = (
                AuthQueryError("the lookup was abandoned")
                if isinstance(exc, asyncio.CancelledError)
                else exc
            )
            future.set_exception(shared)
            future.exception()  # retrieved: waiters that left must not log it
            raise
        finally:
            del self._pending[key]
        future.set_result(verifier)
        self._cache[key] = (self._clock() + self.settings.cache_seconds, verifier)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) > _CACHE_LIMIT:  # a flood of names: start again
                self._cache.clear()
        return verifier

    async def _ask(self, database: str, user: str) -> Verifier | None:
        s = self.settings
        params = (("user", s.auth_user), ("database", database))
        login = Login(
            user=s.auth_user,
            database=database,
            application_name=APPLICATION_NAME,
            replication=False,
            role=None,
            protocol_minor=0,
            requested_minor=0,
            unsupported=(),
            params=(*params, ("application_name", APPLICATION_NAME)),
        )
        lookup = _Lookup(login, self._password_for(database, s.auth_user), s.query, user)
        try:
            async with asyncio.timeout(s.timeout):
                link = await self._connect(lambda: lookup)
                lookup.start(link.transport, link.server_certificate)
                row = await lookup.done
        except TimeoutError:
            lookup.fail("timeout")
            raise AuthQueryError(f"auth.auth_query as {s.auth_user}: timeout") from None
        except AuthQueryError:
            raise
        except UpstreamError as exc:
            raise AuthQueryError(str(exc)) from None
        if row is None:
            return None
        if len(row) != 2:
            raise AuthQueryError(
                f"auth.auth_query must return two columns (user name, secret); "
                f"it returned {len(row)}"
            )
        secret = row[1]
        if secret is None:
            return None
        try:
            return parse_verifier(secret.decode("utf-8", "replace"))
        except ValueError:
            # A plaintext password in pg_authid (PostgreSQL < 10) or garbage: no login.
            logger.warning("auth_query: the secret of user %r is not SCRAM or md5", user)
            return None
