"""A small raw-socket PostgreSQL v3 client for tests.

Written for tests and independent of the proxy's own codec (``proxy.wire``), so a codec bug
cannot hide itself: messages are built with ``struct`` here and replies are read back as
typed :class:`Msg` values with a deadline on every read. Blocking sockets keep it simple.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PROTO_3_0 = 3 << 16
CANCEL_CODE = 80877102
SSL_CODE = 80877103
GSSENC_CODE = 80877104


class Closed(Exception):
    """The peer closed the connection (possibly mid-message)."""


class Timeout(Exception):
    """Nothing (or not enough) arrived before the deadline."""


# ---------------------------------------------------------------- message builders


def _cstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return raw + b"\x00"


def frame(kind: bytes, body: bytes = b"") -> bytes:
    """A typed message: one type byte, an int32 length (including itself), the body."""
    return kind + struct.pack("!I", len(body) + 4) + body


def startup(params: dict[str, str], major: int = 3, minor: int = 0) -> bytes:
    body = struct.pack("!I", (major << 16) | minor)
    for key, value in params.items():
        body += _cstr(key) + _cstr(value)
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def startup_pairs(pairs: Sequence[tuple[str, str]], major: int = 3, minor: int = 0) -> bytes:
    """A StartupMessage with parameters in this exact order, duplicates included."""
    body = struct.pack("!I", (major << 16) | minor)
    for key, value in pairs:
        body += _cstr(key) + _cstr(value)
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!II", 8, GSSENC_CODE)


def cancel_request(pid: int, secret: bytes) -> bytes:
    body = struct.pack("!II", CANCEL_CODE, pid) + secret
    return struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return frame(b"Q", _cstr(sql))


def parse(sql: str, name: str = "", param_oids: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(sql) + struct.pack("!H", len(param_oids))
    body += b"".join(struct.pack("!I", oid) for oid in param_oids)
    return frame(b"P", body)


def bind(
    portal: str = "",
    statement: str = "",
    params: Sequence[bytes | str | None] = (),
    result_formats: Sequence[int] = (),
    param_formats: Sequence[int] = (),
) -> bytes:
    body = _cstr(portal) + _cstr(statement)
    body += struct.pack("!H", len(param_formats))
    body += b"".join(struct.pack("!H", f) for f in param_formats)
    body += struct.pack("!H", len(params))
    for value in params:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            raw = value.encode() if isinstance(value, str) else value
            body += struct.pack("!i", len(raw)) + raw
    body += struct.pack("!H", len(result_formats))
    body += b"".join(struct.pack("!H", f) for f in result_formats)
    return frame(b"B", body)


def describe(kind: str, name: str = "") -> bytes:
    assert kind in ("S", "P")
    return frame(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def close(kind: str, name: str = "") -> bytes:
    assert kind in ("S", "P")
    return frame(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return frame(b"S")


def flush() -> bytes:
    return frame(b"H")


def terminate() -> bytes:
    return frame(b"X")


def copy_data(data: bytes) -> bytes:
    return frame(b"d", data)


def copy_done() -> bytes:
    return frame(b"c")


def copy_fail(reason: str) -> bytes:
    return frame(b"f", _cstr(reason))


def password(text: str) -> bytes:
    return frame(b"p", _cstr(text))


def function_call(oid: int, args: Sequence[bytes | None], result_format: int = 0) -> bytes:
    """FunctionCall 'F' with all arguments in binary format."""
    body = struct.pack("!IH", oid, 1) + struct.pack("!H", 1)  # one format code: binary for all
    body += struct.pack("!H", len(args))
    for arg in args:
        body += struct.pack("!i", -1) if arg is None else struct.pack("!i", len(arg)) + arg
    body += struct.pack("!H", result_format)
    return frame(b"F", body)


# ---------------------------------------------------------------- parsed replies


@dataclass(frozen=True, slots=True)
class Msg:
    """One backend message: its type character and its body."""

    type: str
    body: bytes

    def fields(self) -> dict[str, str]:
        """ErrorResponse / NoticeResponse fields by code letter (S, V, C, M, D, ...)."""
        out: dict[str, str] = {}
        for part in self.body.split(b"\x00"):
            if part:
                out[chr(part[0])] = part[1:].decode(errors="replace")
        return out

    @property
    def sqlstate(self) -> str | None:
        return self.fields().get("C")

    @property
    def tag(self) -> str:
        """CommandComplete tag."""
        return self.body.rstrip(b"\x00").decode()

    @property
    def status(self) -> str:
        """ReadyForQuery transaction status."""
        return chr(self.body[0])

    def row(self) -> list[str | None]:
        """DataRow values, decoded as text."""
        (count,) = struct.unpack_from("!H", self.body, 0)
        pos = 2
        out: list[str | None] = []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", self.body, pos)
            pos += 4
            if size < 0:
                out.append(None)
            else:
                out.append(self.body[pos : pos + size].decode())
                pos += size
        return out

    def columns(self) -> list[str]:
        """RowDescription column names."""
        (count,) = struct.unpack_from("!H", self.body, 0)
        pos, names = 2, []
        for _ in range(count):
            end = self.body.index(b"\x00", pos)
            names.append(self.body[pos:end].decode())
            pos = end + 1 + 18
        return names

    def param_status(self) -> tuple[str, str]:
        name, value, _ = self.body.split(b"\x00", 2)
        return name.decode(), value.decode()

    def key_data(self) -> tuple[int, bytes]:
        """BackendKeyData: (pid, secret); the secret may be longer than 4 bytes in 3.2."""
        (pid,) = struct.unpack_from("!I", self.body, 0)
        return pid, self.body[4:]

    def auth_code(self) -> int:
        return int(struct.unpack_from("!I", self.body, 0)[0])

    def negotiate(self) -> tuple[int, list[str]]:
        """NegotiateProtocolVersion: (newest minor supported, unrecognised options).

        Postgres sends the whole version code (major << 16 | minor); keep only the minor.
        """
        version, count = struct.unpack_from("!II", self.body, 0)
        opts = [o.decode() for o in self.body[8:].split(b"\x00") if o][:count]
        return version & 0xFFFF, opts

    def notification(self) -> tuple[int, str, str]:
        (pid,) = struct.unpack_from("!I", self.body, 0)
        channel, payload, _ = self.body[4:].split(b"\x00", 2)
        return pid, channel.decode(), payload.decode()

    def describe(self) -> tuple[Any, ...]:
        """A comparable summary that ignores volatile fields (pids, keys, line numbers)."""
        if self.type in ("E", "N"):
            f = self.fields()
            return (self.type, f.get("S"), f.get("C"), f.get("M"))
        if self.type == "C":
            return ("C", self.tag)
        if self.type == "Z":
            return ("Z", self.status)
        if self.type == "D":
            return ("D", tuple(self.row()))
        if self.type == "T":
            return ("T", tuple(self.columns()))
        if self.type in ("K", "S"):
            return (self.type,)
        return (self.type, self.body)


def types(msgs: Iterable[Msg]) -> str:
    """The message types as one string, e.g. ``"12TDCZ"``."""
    return "".join(m.type for m in msgs)


# ---------------------------------------------------------------- the connection


class RawConn:
    """A blocking socket with deadline-bounded, message-typed reads."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.timeout = timeout
        self.key: tuple[int, bytes] | None = None
        self.params: dict[str, str] = {}
        self.eof = False

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def _fill(self, need: int, deadline: float) -> None:
        while len(self.buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    f"wanted {need} bytes, have {len(self.buf)}: {bytes(self.buf)[:80]!r}"
                )
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError as exc:
                raise Closed(f"reset with {len(self.buf)} bytes buffered") from exc
            if not chunk:
                raise Closed(f"EOF with {len(self.buf)} bytes buffered: {bytes(self.buf)[:80]!r}")
            self.buf += chunk

    def recv_bytes(self, count: int, timeout: float | None = None) -> bytes:
        self._fill(count, time.monotonic() + (timeout or self.timeout))
        out = bytes(self.buf[:count])
        del self.buf[:count]
        return out

    def recv(self, timeout: float | None = None) -> Msg:
        deadline = time.monotonic() + (timeout or self.timeout)
        self._fill(5, deadline)
        kind = chr(self.buf[0])
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if length < 4 or length > 1 << 30:
            raise AssertionError(f"bad length {length} for message {kind!r}")
        self._fill(1 + length, deadline)
        body = bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return Msg(kind, body)

    def recv_until(self, stop: str = "Z", timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the first of type ``stop``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out: list[Msg] = []
        while True:
            msg = self.recv(max(0.001, deadline - time.monotonic()))
            out.append(msg)
            if msg.type == stop:
                return out

    def recv_n_ready(self, count: int, timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the ``count``-th ReadyForQuery."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out: list[Msg] = []
        while count:
            out += self.recv_until("Z", max(0.001, deadline - time.monotonic()))
            count -= 1
        return out

    def recv_quiet(self, quiet: float = 0.3) -> list[Msg]:
        """Whatever complete messages arrive until ``quiet`` seconds pass with nothing new.

        Stops early at a clean close (``self.eof`` becomes True); a close in the middle of a
        message raises :class:`Closed`.
        """
        out: list[Msg] = []
        while True:
            try:
                out.append(self.recv(quiet))
            except Timeout:
                return out
            except Closed:
                if self.buf:
                    raise
                self.eof = True
                return out

    def drain(self, timeout: float) -> tuple[list[Msg], bool]:
        """Messages until the peer closes (True) or ``timeout`` passes (False).

        Raises :class:`Closed` if the peer closes in the middle of a message.
        """
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out, False
            try:
                out.append(self.recv(left))
            except Timeout:
                return out, False
            except Closed:
                if self.buf:
                    raise
                self.eof = True
                return out, True

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until EOF/reset; return the bytes received meanwhile. Timeout if still open."""
        deadline = time.monotonic() + timeout
        got = bytes(self.buf)
        self.buf.clear()
        if self.eof:
            return got
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"connection still open after {timeout}s; received {got[:200]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return got
            if not chunk:
                return got
            got += chunk

    # -------------------------------------------------------- convenience

    def login(
        self,
        user: str = "postgres",
        database: str = "postgres",
        password_text: str | None = None,
        extra: dict[str, str] | None = None,
        minor: int = 0,
    ) -> list[Msg]:
        """Startup and authentication (trust, cleartext, md5) up to the first ReadyForQuery.

        Returns every message received; raises AssertionError on an ErrorResponse.
        """
        params = {"user": user, "database": database, **(extra or {})}
        self.send(startup(params, minor=minor))
        return self.finish_login(user, password_text)

    def finish_login(self, user: str = "postgres", password_text: str | None = None) -> list[Msg]:
        """Authentication after a startup packet already sent, up to the first ReadyForQuery."""
        out: list[Msg] = []
        while True:
            msg = self.recv()
            out.append(msg)
            if msg.type == "E":
                raise AssertionError(f"login failed: {msg.fields()}")
            if msg.type == "R":
                code = msg.auth_code()
                if code == 3:
                    self.send(password(password_text or ""))
                elif code == 5:
                    salt = msg.body[4:8]
                    inner = hashlib.md5(((password_text or "") + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(password("md5" + outer))
                elif code != 0:
                    raise AssertionError(f"unsupported auth request {code}")
            elif msg.type == "K":
                self.key = msg.key_data()
            elif msg.type == "S":
                name, value = msg.param_status()
                self.params[name] = value
            elif msg.type == "Z":
                return out

    def simple(self, sql: str, timeout: float | None = None) -> list[Msg]:
        self.send(query(sql))
        return self.recv_until("Z", timeout)


def connect(host: str, port: int, timeout: float = 5.0, **login: object) -> RawConn:
    """A logged-in connection (see :meth:`RawConn.login` for keyword arguments)."""
    conn = RawConn(host, port, timeout)
    conn.login(**login)  # type: ignore[arg-type]
    return conn


def summary(msgs: Iterable[Msg]) -> list[tuple[Any, ...]]:
    return [m.describe() for m in msgs]
