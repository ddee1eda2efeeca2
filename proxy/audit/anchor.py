"""External anchors: the chain head published where the trail's writer cannot rewrite it.

Whoever can rewrite the audit directory can rewrite a plain SHA-256 chain consistently, and
``audit.head`` with it. Every ``audit.anchor_interval`` the proxy therefore publishes the newest
record's ``(seq, hash)`` to syslog and/or a webhook; the central store holds a copy of every
record anyway. ``pgwarden verify --anchor SOURCE`` then checks the local trail against what was
published: a record that differs, or a published seq the trail no longer reaches, is found even
without an HMAC key.

An anchor message is one JSON object,
``{"type":"anchor","trail_id":…,"proxy_id":…,"seq":…,"hash":…,"ts":…}`` (``trail_id`` from
``audit.id``, see :mod:`proxy.audit.trailid`);
in syslog it follows the word ``pgwarden-anchor``. ``--anchor FILE`` reads every such object
in any text file (a syslog file, what a webhook receiver stored, one JSON object per line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import AuditError

if TYPE_CHECKING:
    import logging.handlers

    from proxy.config import Config

log = logging.getLogger("pgwarden.audit")

SYSLOG_TAG = "pgwarden-anchor"


@dataclass(frozen=True, slots=True)
class Anchor:
    """One published chain head of the trail ``trail_id``."""

    seq: int
    hash: str
    trail_id: str
    ts: str
    source: str


def anchor_message(
    trail_id: str, proxy_id: str, seq: int, digest: str, ts: datetime | None = None
) -> bytes:
    when = (ts or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "type": "anchor",
        "trail_id": trail_id,
        "proxy_id": proxy_id,
        "seq": seq,
        "hash": digest,
        "ts": when,
    }
    return orjson.dumps(body)


def parse_anchor_text(text: str, source: str) -> list[Anchor]:
    """Every anchor object found in ``text``, one per line (syslog prefixes allowed)."""
    anchors = []
    for number, line in enumerate(text.splitlines(), 1):
        start = line.find("{")
        if start < 0 or '"anchor"' not in line:
            continue
        try:
            value = orjson.loads(line[start:].strip().strip("\x00"))
        except orjson.JSONDecodeError:
            continue
        anchor = _anchor_of(value, f"{source}:{number}")
        if anchor is not None:
            anchors.append(anchor)
    return anchors


def _anchor_of(value: Any, source: str) -> Anchor | None:
    if not isinstance(value, dict) or value.get("type") != "anchor":
        return None
    seq, digest, trail_id = value.get("seq"), value.get("hash"), value.get("trail_id")
    if type(seq) is not int or not isinstance(digest, str) or not isinstance(trail_id, str):
        return None
    return Anchor(seq, digest, trail_id, str(value.get("ts") or ""), source)


def load_anchors(spec: str, schema: str = "public") -> list[Anchor]:
    """Anchors from a file, or from the central store when ``spec`` is a postgresql:// DSN."""
    if spec.startswith(("postgres://", "postgresql://")):
        return asyncio.run(_store_anchors(spec, schema))
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AuditError(f"cannot read anchor file {spec!r}: {exc.strerror or exc}") from None
    anchors = parse_anchor_text(text, path.name)
    if not anchors:
        raise AuditError(f"no pgwarden anchor in {spec!r}")
    return anchors


async def _store_anchors(dsn: str, schema: str) -> list[Anchor]:
    """The newest record of each trail in the store: the store is an anchor by itself."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    from proxy.store.schema import quote_schema

    table = f"{quote_schema(schema)}.audit_events"
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise AuditError(f"cannot connect to the anchor store: {exc}") from None
    try:
        rows = await conn.fetch(
            f"SELECT DISTINCT ON (trail_id) trail_id, seq, hash, ts::text AS ts"
            f" FROM {table} ORDER BY trail_id, seq DESC"
        )
    except asyncpg.PostgresError as exc:
        raise AuditError(f"no pgwarden audit store at this DSN (schema {schema}): {exc}") from None
    finally:
        await conn.close()
    anchors = [
        Anchor(int(r["seq"]), str(r["hash"]), str(r["trail_id"]), str(r["ts"]), "the store")
        for r in rows
    ]
    if not anchors:
        raise AuditError("the anchor store holds no records")
    return anchors


def syslog_address(spec: str) -> str | tuple[str, int]:
    """``local`` → /dev/log, a path → that socket, ``HOST:PORT`` → UDP."""
    if spec == "local":
        return "/dev/log"
    if spec.startswith("/"):
        return spec
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise AuditError(f"expected local, a socket path or HOST:PORT, got {spec!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class AnchorPublisher:
    """Publishes the trail's head every interval (when it moved) and once more at close."""

    def __init__(self, cfg: Config, trail: Any, proxy_id: str) -> None:
        self.trail = trail
        self.proxy_id = proxy_id
        self.interval: float = cfg["audit.anchor_interval"]
        self.webhook: str = cfg["audit.anchor_webhook"]
        syslog: str = cfg["audit.anchor_syslog"]
        self._syslog_address = syslog_address(syslog) if syslog else None
        self._syslog: logging.handlers.SysLogHandler | None = None
        self._published = -1
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.failures = 0

    @staticmethod
    def wanted(cfg: Config) -> bool:
        return bool(cfg["audit.anchor_syslog"] or cfg["audit.anchor_webhook"])

    async def start(self) -> None:
        if self._syslog_address is not None:
            import logging.handlers  # only with a syslog anchor (it brings pickle and more)

            self._syslog = logging.handlers.SysLogHandler(
                self._syslog_address,
                facility=logging.handlers.SysLogHandler.LOG_AUTH,
                socktype=socket.SOCK_DGRAM,
            )
            self._syslog.append_nul = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.publish()

    async def publish(self) -> None:
        """Publish the head now, unless it was already published."""
        seq, digest = self.trail.head
        if seq == self._published or seq == 0:
            return
        message = anchor_message(self.trail.trail_id, self.proxy_id, seq, digest)
        ok = True
        if self._syslog is not None:
            ok = self._send_syslog(message) and ok
        if self.webhook:
            ok = await self._post(message) and ok
        if ok:
            self._published = seq
            self.published += 1
        else:
            self.failures += 1

    def _send_syslog(self, message: bytes) -> bool:
        assert self._syslog is not None
        record = logging.LogRecord(
            "pgwarden.anchor", logging.INFO, __file__, 0, "%s %s",
            (SYSLOG_TAG, message.decode()), None,
        )  # fmt: skip
        try:
            self._syslog.emit(record)
        except Exception as exc:
            log.error("cannot publish the audit chain head to syslog: %s", exc)
            return False
        return True

    async def _post(self, message: bytes) -> bool:
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as client,
                client.post(
                    self.webhook, data=message, headers={"Content-Type": "application/json"}
                ) as response,
            ):
                if response.status >= 300:
                    log.error("anchor webhook answered HTTP %d", response.status)
                    return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.error("cannot publish the audit chain head to the webhook: %s", exc)
            return False
        return True

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.publish()  # the final head, after the trail's last writes
        if self._syslog is not None:
            self._syslog.close()
