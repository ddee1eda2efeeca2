"""The start of a connection as an explicit state machine: startup, encryption requests,
upstream connect, authentication relay, BackendKeyData and ParameterStatus.

Sans-IO: the adapter feeds client bytes (:meth:`Handshake.client_bytes`) and watched server
messages (:meth:`Handshake.on_server`) and acts on what comes back. Startup parameters are read
exactly as PostgreSQL reads them (DESIGN.md rule 8): a duplicate key's last value wins, user and
database names are cut to 63 bytes, and ``options=-c role=…`` / a ``role`` key is the role
switch it is. The packet sent upstream carries each parameter once, so the server cannot read
it differently from pgwarden.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from proxy.auth import passthrough
from proxy.auth.password import Md5Secret, md5_password, md5_response
from proxy.auth.scram_client import ScramClient
from proxy.errors import AuthenticationError, BackendProtocolError, FrontendProtocolError
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.framing import Framer
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    encode_startup,
    parse_startup,
    startup_length,
)

_U32 = struct.Struct("!I")
NAMEDATALEN = 64
_FALSE = frozenset({"", "false", "off", "no", "0"})
# Startup keys PostgreSQL reads itself; every other key is a setting (postmaster.c).
_PACKET_KEYS = frozenset({"user", "database", "options", "replication"})


class Phase(Enum):
    STARTUP = "startup"  # reading the first packet(s)
    # 'S' sent, the TLS handshake runs: client bytes are only held (they may arrive,
    # decrypted, before the upgrade returns) and processed once the new transport is in use.
    TLS_UPGRADE = "tls_upgrade"
    LOGIN = "login"  # pgwarden authenticates the client itself (auth.mode proxy)
    CONNECTING = "connecting"  # opening the upstream connection
    AUTH = "auth"  # relaying authentication
    READY = "ready"  # relaying statements
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Login:
    """A StartupMessage as PostgreSQL reads it."""

    user: str
    database: str
    application_name: str
    replication: bool
    role: str | None  # SET ROLE requested in the startup packet (a ``role`` key or options)
    protocol_minor: int  # what pgwarden asks the server for (0 or 2; the server may say 0)
    requested_minor: int
    unsupported: tuple[str, ...]  # _pq_ options we decline
    params: tuple[tuple[str, str], ...] = field(default=())  # each key once, last value

    def upstream_packet(self) -> bytes:
        """The startup packet pgwarden sends the server: the client's protocol version as far
        as pgwarden understands it (up to 3.2), no _pq_ options."""
        return encode_startup(3, self.protocol_minor, self.params)

    @property
    def owes_negotiation(self) -> bool:
        """The client asked for more than pgwarden gives: it must get a
        NegotiateProtocolVersion even if the server accepts what pgwarden asked for."""
        return self.requested_minor != self.protocol_minor or bool(self.unsupported)

    def negotiation(self, server_minor: int, server_unsupported: list[str]) -> bytes:
        """The one NegotiateProtocolVersion the client gets: pgwarden's refusals merged with
        the server's (or b"" when there is nothing to say)."""
        minor = min(server_minor, self.protocol_minor)
        options = list(dict.fromkeys([*self.unsupported, *server_unsupported]))
        if minor == self.requested_minor and not options:
            return b""
        return m.negotiate_protocol_version(minor, options)


def clip_identifier(value: str) -> str:
    """PostgreSQL truncates user and database names to NAMEDATALEN - 1 bytes, never cutting
    a character in half."""
    raw = value.encode()
    if len(raw) < NAMEDATALEN:
        return value
    return raw[: NAMEDATALEN - 1].decode("utf-8", "ignore")


def split_options(options: str) -> list[str]:
    """Split ``options`` like PostgreSQL's pg_split_opts: whitespace separates, a backslash
    makes the next character literal."""
    out: list[str] = []
    current: list[str] = []
    escaped = False
    started = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
            started = True
        elif ch == "\\":
            escaped = True
            started = True
        elif ch.isspace():
            if started:
                out.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        out.append("".join(current))
    return out


# The backend's getopt string for command-line switches (postgres.c,
# process_postgres_switches): ``options`` is read with it, so ``-Ec name=value`` sets a
# setting just as ``-c name=value`` does.
_SWITCH_ARGS = frozenset("BCcDdfhkNprStvW-")
_SWITCH_FLAGS = frozenset("bEeFijlnOPsT")


def _switches(words: list[str]) -> list[tuple[str, str | None]]:
    """Each switch of ``words`` as (letter, argument), read as getopt reads them. Where the
    server would refuse the options (an unknown letter, a missing argument), reading stops:
    the login fails there anyway."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        if len(word) < 2 or word[0] != "-":
            continue  # getopt moves it to the end; the server then refuses it
        j = 1
        while j < len(word):
            letter = word[j]
            j += 1
            if letter in _SWITCH_FLAGS:
                out.append((letter, None))
            elif letter in _SWITCH_ARGS:
                if j < len(word):
                    out.append((letter, word[j:]))
                elif i < len(words):
                    out.append((letter, words[i]))
                    i += 1
                else:
                    return out
                break
            else:
                return out
    return out


def _setting_of(letter: str, argument: str | None) -> tuple[str, str] | None:
    if letter not in "c-" or argument is None or "=" not in argument:
        return None
    name, value = argument.split("=", 1)
    return name.replace("-", "_").lower(), value


def _option_settings(options: str) -> list[tuple[str, str]]:
    """The ``-c name=value`` / ``--name=value`` settings of a startup ``options`` value."""
    found = []
    for letter, argument in _switches(split_options(options)):
        setting = _setting_of(letter, argument)
        if setting is not None:
            found.append(setting)
    return found


def startup_setting(params: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The value the server gives setting ``name`` from a startup packet's parameters (None:
    not set there). PostgreSQL applies ``options`` (its ``-c`` switches) first and then the
    other keys in packet order, the last one winning; setting names ignore case."""
    found: str | None = None
    for key, value in params:
        if key == "options":
            for option, option_value in _option_settings(value):
                if option == name:
                    found = option_value
    for key, value in params:
        if key not in _PACKET_KEYS and key.lower() == name:
            found = value
    return found


def without_settings(
    params: tuple[tuple[str, str], ...], names: frozenset[str]
) -> tuple[tuple[tuple[str, str], ...], bool]:
    """``params`` with every way of setting ``names`` (a key in any case, a ``-c`` switch in
    ``options``) removed, and whether anything was."""
    out: list[tuple[str, str]] = []
    removed = False
    for key, value in params:
        if key == "options":
            kept, dropped = _options_without(value, names)
            removed = removed or dropped
            if kept:
                out.append((key, kept))
        elif key not in _PACKET_KEYS and key.lower() in names:
            removed = True
        else:
            out.append((key, value))
    return tuple(out), removed


def _options_without(options: str, names: frozenset[str]) -> tuple[str, bool]:
    switches = _switches(split_options(options))
    kept: list[str] = []
    removed = False
    for letter, argument in switches:
        setting = _setting_of(letter, argument)
        if setting is not None and setting[0] in names:
            removed = True
            continue
        if letter == "-":  # --name=value: one word ("--" alone ends the switches)
            kept.append("--" + _escape_option(argument or ""))
            continue
        kept.append(f"-{letter}")
        if argument is not None:
            kept.append(_escape_option(argument))
    if not removed:
        return options, False
    # Rebuilt one switch at a time, escaped as pg_split_opts reads it.
    return " ".join(kept), True


def _escape_option(word: str) -> str:
    return "".join("\\" + ch if ch == "\\" or ch.isspace() else ch for ch in word)


def read_login(startup: StartupMessage) -> Login:
    """Read a StartupMessage the way PostgreSQL's ProcessStartupPacket does."""
    last: dict[str, str] = {}
    for key, value in startup.params:
        last[key] = value
    params = tuple((k, v) for k, v in last.items() if not k.startswith("_pq_."))
    user = last.get("user", "")
    if not user:
        raise FrontendProtocolError(
            "no PostgreSQL user name specified in startup packet", c.SQLSTATE_INVALID_AUTHORIZATION
        )
    wanted = startup.minor
    minor = 2 if wanted >= 2 else 0
    return Login(
        user=clip_identifier(user),
        database=clip_identifier(last.get("database") or user),
        application_name=last.get("application_name", ""),
        replication=last.get("replication", "").lower() not in _FALSE,
        role=startup_setting(params, "role"),
        protocol_minor=minor,
        requested_minor=wanted,
        unsupported=tuple(k for k in last if k.startswith("_pq_.")),
        params=params,
    )


class StartupEvent(Enum):
    """What the first packets of a connection asked for."""

    NEED_MORE = "need_more"
    TLS_UPGRADE = "tls_upgrade"  # 'S' is in the reply: upgrade the connection, then resume
    LOGIN = "login"
    CANCEL = "cancel"
    BAD_CANCEL = "bad_cancel"  # a malformed CancelRequest: close without a word
    # An impossible packet length: PostgreSQL logs "invalid length of startup packet" and
    # closes without a word; so does pgwarden.
    INVALID_LENGTH = "invalid_length"


@dataclass(frozen=True, slots=True)
class StartupResult:
    event: StartupEvent
    reply: bytes = b""  # bytes for the client ('N' to encryption requests)
    login: Login | None = None
    cancel: CancelRequest | None = None


class Handshake:
    """Client side of the start of a connection (before and during authentication)."""

    __slots__ = (
        "_buf",
        "_early",
        "_framer",
        "encryption_requests",
        "phase",
        "server_key",
        "tls_offered",
    )

    def __init__(self, tls_offered: bool = False) -> None:
        self.phase = Phase.STARTUP
        # An SSLRequest is answered 'S' (once: a connection already on TLS gets 'N').
        self.tls_offered = tls_offered
        self._buf = bytearray()
        self._framer = Framer(FrontendProtocolError, large_limit=c.SMALL_MESSAGE_LIMIT)
        self._early: list[bytes] = []  # auth messages that arrived before the upstream did
        self.encryption_requests = 0
        self.server_key: tuple[int, bytes] | None = None

    def startup_bytes(self, data: bytes) -> StartupResult:
        """Feed bytes while in :attr:`Phase.STARTUP`. After a ``TLS_UPGRADE`` result the
        caller upgrades the connection, sets :attr:`phase` back to ``STARTUP`` and feeds
        what arrived meanwhile."""
        self._buf += data
        replies = b""
        while True:
            try:
                length = startup_length(self._buf)
            except FrontendProtocolError:
                return StartupResult(StartupEvent.INVALID_LENGTH, replies)
            if length is None or len(self._buf) < length:
                return StartupResult(StartupEvent.NEED_MORE, replies)
            packet = bytes(self._buf[:length])
            del self._buf[:length]
            try:
                request = parse_startup(packet)
            except FrontendProtocolError:
                if _U32.unpack_from(packet, 4)[0] != c.CANCEL_REQUEST_CODE:
                    raise
                return StartupResult(StartupEvent.BAD_CANCEL)
            if isinstance(request, SSLRequest | GSSENCRequest):
                if self._buf:
                    # Bytes sent before our answer could have been injected by a man in the
                    # middle (CVE-2021-23214): refuse them.
                    raise FrontendProtocolError("unexpected data after an encryption request")
                self.encryption_requests += 1
                if self.encryption_requests > 2:
                    raise FrontendProtocolError("too many encryption requests")
                if isinstance(request, SSLRequest) and self.tls_offered:
                    self.tls_offered = False
                    self.phase = Phase.TLS_UPGRADE
                    return StartupResult(StartupEvent.TLS_UPGRADE, replies + b"S")
                replies += b"N"
                continue
            if isinstance(request, CancelRequest):
                return StartupResult(StartupEvent.CANCEL, replies, cancel=request)
            assert isinstance(request, StartupMessage)
            login = read_login(request)
            self.phase = Phase.CONNECTING
            leftover = bytes(self._buf)
            self._buf.clear()
            if leftover:
                self._early.append(self.auth_bytes(leftover))
            return StartupResult(StartupEvent.LOGIN, replies, login=login)

    def auth_bytes(self, data: bytes) -> bytes:
        """Client bytes during authentication: password/SASL messages (and Terminate) only."""
        out = []
        for kind, _body, raw in self._framer.feed(data):
            if kind not in b"pX":
                raise FrontendProtocolError(
                    f"unexpected message type {chr(kind)!r} during authentication"
                )
            out.append(raw)
        return b"".join(out)

    def auth_messages(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        """The same, as (type, body, whole message), for pgwarden's own authentication
        (which reads them, so a message too large to hold is refused)."""
        out = []
        for kind, body, raw in self._framer.feed(data):
            if kind not in b"pX":
                raise FrontendProtocolError(
                    f"unexpected message type {chr(kind)!r} during authentication"
                )
            if body is None:  # only the raw bytes of a message too large to hold
                raise FrontendProtocolError("authentication message too long")
            out.append((kind, body, raw))
        return out

    def defer(self, data: bytes) -> None:
        """Authentication bytes that arrived before the upstream connection."""
        self._early.append(data)

    def take_early(self) -> bytes:
        out = b"".join(self._early)
        self._early.clear()
        return out


class AuthStep(Enum):
    """What a server message during authentication meant."""

    RELAY = "relay"
    TO_SERVER = "to_server"  # pgwarden's own login answer: ``to_server`` holds it
    BACKEND_KEY = "backend_key"  # ``server_key`` is now set
    PARAMETER = "parameter"  # ``parameter`` holds (name, value)
    FAILED = "failed"  # ``failure`` holds the error fields
    READY = "ready"  # ``ready_status`` holds the transaction status


class AuthRelay:
    """Server side of authentication: relays the server's messages to the client, merging
    protocol negotiation, removing channel binding (which cannot survive a relay) and
    explaining the server's channel-binding downgrade error."""

    __slots__ = (
        "_local",
        "_login",
        "_md5",
        "_negotiated",
        "_password",
        "failure",
        "parameter",
        "protocol_minor",
        "ready_status",
        "server_key",
        "to_server",
        "upstream_login",
    )

    def __init__(
        self,
        login: Login,
        *,
        local: bool = False,
        upstream_login: ScramClient | None = None,
        password: str | None = None,
        md5_secret: Md5Secret | None = None,
    ) -> None:
        """``local``: pgwarden authenticated the client itself (and gave it its protocol
        negotiation); it answers the server's authentication requests with
        ``upstream_login`` (None: the server must need no password, trust or cert), and
        only the server's final AuthenticationOk reaches the client. ``password`` (from
        auth.passfile, or the client's cleartext one) also answers a server asking for md5
        or a cleartext password; ``md5_secret`` (the users file's md5 entry) answers md5."""
        self._login = login
        self._local = local
        self._negotiated = False
        self._password = password
        self._md5 = md5_secret
        self.upstream_login = upstream_login
        self.to_server = b""
        # The protocol the client speaks: what the server agreed to, or in local mode what
        # pgwarden agreed to.
        self.protocol_minor = login.protocol_minor
        self.server_key: tuple[int, bytes] | None = None
        self.parameter: tuple[str, str] = ("", "")
        self.failure: dict[str, str] = {}
        self.ready_status = c.TX_IDLE

    def on_message(self, kind: int, body: bytes) -> tuple[bytes | None, AuthStep]:
        """Returns the replacement for the message (None: relay it as is) and its meaning."""
        login = self._login
        if not self._negotiated:
            # The first server message: the client gets one NegotiateProtocolVersion at most,
            # merging what pgwarden and the server each declined.
            self._negotiated = True
            if kind == 118:  # 'v'
                minor, declined = m.decode_negotiate_protocol_version(body)
                if self._local:
                    # pgwarden answered the client's negotiation already; a server speaking
                    # 3.0 to a 3.2 client changes nothing it sees (only the cancel key's
                    # length differs, and its 4-byte key is valid in 3.2). pgwarden sends
                    # the server no _pq_ options, so there are none for it to decline.
                    return b"", AuthStep.RELAY
                self.protocol_minor = min(minor, login.protocol_minor)
                return login.negotiation(minor, declined), AuthStep.RELAY
            if login.owes_negotiation and not self._local:
                rest, step = self.on_message(kind, body)
                original = m.message(kind, body) if rest is None else rest
                return login.negotiation(login.protocol_minor, []) + original, step
        if kind == 82:  # 'R'
            if self._local:
                return self._login_step(self.upstream_login, body)
            if m.auth_code(body) == 10:
                # SCRAM-SHA-256-PLUS never survives a relay (the client would bind to a
                # certificate the server does not hold): removed from every offer.
                return passthrough.client_offer(body), AuthStep.RELAY
            return None, AuthStep.RELAY
        if kind == 75:  # 'K': relayed unchanged, the backend's identity is the server's
            self.server_key = m.decode_backend_key(body)
            return None, AuthStep.BACKEND_KEY
        if kind == 83:  # 'S'
            self.parameter = m.decode_parameter_status(body)
            return None, AuthStep.PARAMETER
        if kind == 69:  # 'E'
            self.failure = m.decode_fields(body)
            explained = passthrough.explain_error(body)
            return (None if explained is None else m.message(kind, explained)), AuthStep.FAILED
        if kind == 90:  # 'Z'
            self.ready_status = check_ready(body)
            return None, AuthStep.READY
        if kind == 118:
            raise BackendProtocolError("unexpected NegotiateProtocolVersion during startup")
        raise BackendProtocolError(f"unexpected {chr(kind)!r} message during startup")

    def _login_step(self, client: ScramClient | None, body: bytes) -> tuple[bytes | None, AuthStep]:
        code = m.auth_code(body)
        if code == 0:  # the server accepted pgwarden: now the client's AuthenticationOk
            return None, AuthStep.RELAY
        password = self._password
        if code in (3, 5) and password is not None:
            secret = password if code == 3 else md5_password(password, self._login.user, body[4:8])
            self.to_server = m.message(ord("p"), secret.encode() + b"\x00")
            return b"", AuthStep.TO_SERVER
        if code == 5 and self._md5 is not None:
            answer = md5_response(self._md5, body[4:8])
            self.to_server = m.message(ord("p"), answer.encode() + b"\x00")
            return b"", AuthStep.TO_SERVER
        if client is None or code not in (10, 11, 12):
            raise AuthenticationError(
                f'pgwarden has no credential for role "{self._login.user}" that answers the '
                f"server's authentication request (method {code}): give the role a password "
                "in auth.passfile",
                c.SQLSTATE_INVALID_AUTHORIZATION,
            )
        if code == 10:
            self.to_server = client.initial_response(m.sasl_mechanisms(body))
        elif code == 11:
            self.to_server = client.continue_response(body[4:])
        else:
            client.final(body[4:])
            return b"", AuthStep.RELAY
        return b"", AuthStep.TO_SERVER


def check_ready(body: bytes) -> int:
    if len(body) != 1 or body[0] not in b"ITE":
        raise BackendProtocolError("invalid ReadyForQuery message")
    return body[0]
