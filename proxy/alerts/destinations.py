"""Delivering fired alerts: a log line, or an HTTP POST (JSON or Slack-compatible).

Delivery never blocks the event loop or the audit trail: each webhook has its own bounded
queue and worker task; a slow or failing receiver only delays its own queue, and when that
queue is full the newest alert is dropped for that webhook (counted and logged) — the alert
itself is already in the audit trail, so a delivery drop loses no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from proxy.alerts.rules import Webhook

log = logging.getLogger("pgwarden.alerts")

QUEUE_SIZE = 1000
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


def slack_text(alert: Mapping[str, Any]) -> str:
    severity = str(alert.get("severity", "")).upper()
    return f"[pgwarden {severity}] {alert.get('alert')}: {alert.get('summary')}"


def payload(hook: Webhook, alert: Mapping[str, Any]) -> bytes:
    if hook.format == "slack":
        return orjson.dumps({"text": slack_text(alert)})
    return orjson.dumps(dict(alert))


def log_alert(alert: Mapping[str, Any]) -> None:
    log.warning(
        "ALERT %s severity=%s group=%s: %s",
        alert.get("alert"),
        alert.get("severity"),
        alert.get("group"),
        alert.get("summary"),
    )


class WebhookSender:
    """One webhook: a queue and a worker that POSTs with retries and exponential back-off."""

    def __init__(self, hook: Webhook, backoff_start: float = BACKOFF_START) -> None:
        self.hook = hook
        self.backoff_start = backoff_start
        self.sent = 0
        self.failed = 0  # alerts given up on after every retry
        self.dropped = 0  # alerts not queued because the queue was full
        self._queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def submit(self, alert: Mapping[str, Any]) -> None:
        """Queue ``alert``; must be called on the event loop thread."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="pgwarden-webhook"
            )
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error(
                "alert webhook %s: queue full, alert %s not delivered",
                self._where(),
                alert.get("alert"),
            )

    async def drain(self) -> None:
        """Wait until everything queued so far was delivered or given up on."""
        await self._queue.join()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self._deliver(alert)
            finally:
                self._queue.task_done()

    async def _deliver(self, alert: Mapping[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = payload(self.hook, alert)
        headers = {"Content-Type": "application/json", **dict(self.hook.headers)}
        delay = self.backoff_start
        last = ""
        for attempt in range(self.hook.retries + 1):
            if attempt:
                await asyncio.sleep(delay)  # back-off between retries, not synchronization
                delay = min(delay * 2, BACKOFF_MAX)
            try:
                async with self._session.post(
                    self.hook.url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.hook.timeout),
                ) as response:
                    await response.read()
                    if response.status < 300:
                        self.sent += 1
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        self.failed += 1
        log.error(
            "alert webhook %s: %s not delivered after %d attempts (%s)",
            self._where(),
            alert.get("alert"),
            self.hook.retries + 1,
            last,
        )

    def _where(self) -> str:
        """The URL without credentials or query string (they may hold tokens)."""
        parts = urlsplit(self.hook.url)
        host = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{host}{parts.path}"
