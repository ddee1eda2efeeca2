"""The in-process tier: a real :class:`~proxy.session.Session` with no sockets and no server.

Transports are fakes that record what was written; the server is whatever bytes the test
feeds in; the audit trail is the real one, in a temporary directory (without an event loop it
writes each event at once). Everything a test asserts is bytes and audit events.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from proxy import config as config_module
from proxy import tls as tls_module
from proxy.audit.trail import AuditTrail
from proxy.auth.ratelimit import LoginLimiter
from proxy.config import Config
from proxy.gate import Gate
from proxy.policy.loader import load_policy
from proxy.relay.attempts import AttemptLimiter
from proxy.relay.localauth import LocalAuthSettings
from proxy.session import Session
from proxy.sql.pool import AnalysisPool, PoolConfig
from proxy.state import Counters
from proxy.wire.startup import CancelRequest


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, duplicates merged)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in points:
        out.append(data[last:point])
        last = point
    out.append(data[last:])
    return out


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\x00"


def startup(**params: str) -> bytes:
    body = struct.pack("!I", 3 << 16) + b"".join(cstr(k) + cstr(v) for k, v in params.items())
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(sql: str, name: str = "") -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + b"\x00\x00")


def bind(statement: str = "", portal: str = "", params: Iterable[bytes] = ()) -> bytes:
    values = list(params)
    body = cstr(portal) + cstr(statement) + b"\x00\x00" + struct.pack("!H", len(values))
    for value in values:
        body += struct.pack("!i", len(value)) + value
    return msg(b"B", body + b"\x00\x00")


def execute(portal: str = "", limit: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", limit))


def sync() -> bytes:
    return msg(b"S")


def ready(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def data_row(*values: bytes) -> bytes:
    body = struct.pack("!H", len(values))
    for value in values:
        body += struct.pack("!i", len(value)) + value
    return msg(b"D", body)


def row_description(*names: str) -> bytes:
    body = struct.pack("!H", len(names))
    for name in names:
        body += cstr(name) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def error(code: str, text: str, severity: str = "ERROR") -> bytes:
    fields = [("S", severity), ("V", severity), ("C", code), ("M", text)]
    return msg(b"E", b"".join(k.encode() + cstr(v) for k, v in fields) + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return msg(b"S", cstr(name) + cstr(value))


def login_ok(pid: int = 4242, secret: bytes = b"\x01\x02\x03\x04") -> bytes:
    out = msg(b"R", struct.pack("!I", 0))
    for name, value in (
        ("server_version", "15.99"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
    ):
        out += parameter_status(name, value)
    return out + msg(b"K", struct.pack("!I", pid) + secret) + ready()


class FakeTransport:
    """Records writes; pause/resume and close are flags."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self._peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


class _Timer:
    def cancel(self) -> None:
        pass


class Host:
    """The server services a session needs (SessionHost), with nothing running behind."""

    def __init__(self, tmp: Path, policy_text: str | None = None, **cfg: Any) -> None:
        self.cfg: Config = config_module.defaults().replace(audit__dir=str(tmp / "audit"), **cfg)
        self.proxy_id = "test-proxy"
        policy = None
        if policy_text is not None:
            path = tmp / "policy.yaml"
            path.write_text(policy_text)
            policy = load_policy([str(path)])
        self.gate = Gate(self.cfg, policy)
        self.trail = AuditTrail(self.cfg, self.proxy_id)
        self.trail.open()
        self.tls = tls_module.load(self.cfg)
        self.users = None
        self.passfile = None
        self.auth_query = None
        self.local_auth = LocalAuthSettings()
        self.limiter = LoginLimiter()
        self._counters = Counters()
        self.spawned: list[Coroutine[Any, Any, Any]] = []
        self.sessions: list[Session] = []
        self.backends: dict[int, Session] = {}
        self.analysed: list[bytes] = []
        self.attempts = AttemptLimiter(burst=3)

    @property
    def counters(self) -> Counters:
        return self._counters

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.spawned.append(coro)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return _Timer()  # type: ignore[return-value]

    def session_opened(self, session: Any) -> None:
        self.sessions.append(session)

    def session_closed(self, session: Any) -> None:
        pass

    def backend_started(self, session: Any, pid: int, secret: bytes) -> None:
        self.backends[pid] = session

    async def route_cancel(self, request: CancelRequest) -> tuple[str, str | None]:
        return "unknown_key", None

    async def forward_cancel(self, pid: int, secret: bytes) -> None:
        pass

    def audit_accepting(self) -> bool:
        return True

    async def resolve_function(self, database: str, oid: int) -> Any:
        return None

    async def analyse(self, sql: bytes, settings: Any) -> Any:
        self.analysed.append(sql)
        if len(sql) > self.cfg["limits.max_analysis_size"]:
            # What the server's pool answers without starting a worker.
            pool = AnalysisPool(PoolConfig(max_size=self.cfg["limits.max_analysis_size"]))
            return (await pool.analyse(sql, settings)).facts
        return self.gate.inspect(sql, settings)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        # Without an event loop the trail writes each event as it is submitted.
        out = []
        for path in sorted((Path(self.cfg["audit.dir"])).glob("*.jsonl")):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                if kind is None or event["type"] == kind:
                    out.append(event)
        return out


class Wire:
    """One session between a fake client transport and a fake upstream transport."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.session = Session(host)  # type: ignore[arg-type]
        self.client = FakeTransport()
        self.upstream = FakeTransport()
        self.session.client_connected(self.client)  # type: ignore[arg-type]

    def client_sends(self, data: bytes) -> None:
        self.session.client_data(data)
        if self.session.upstream is None and self.host.spawned:
            # The session asked to connect upstream: connect it to our fake at once.
            for coro in self.host.spawned:
                coro.close()
            self.host.spawned.clear()
            if self.session.flow.login is not None:
                self.session.flow.upstream_connected(
                    self.upstream,  # type: ignore[arg-type]
                    self.session.flow.login.upstream_packet(),
                )

    def server_sends(self, data: bytes) -> None:
        self.session.server_data(data)

    def login(self, **params: str) -> None:
        self.client_sends(startup(user=params.pop("user", "alice"), **params))
        self.server_sends(login_ok())
        self.upstream.take()
        self.client.take()
