"""The alert engine: audit events in, alert events out.

It listens to the trail (after events are on disk), so the session hot path never calls it.
Each fired alert is submitted back to the trail as a ``type: alert`` event — alerts are part
of the tamper-evident record — and handed to its destinations without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from proxy.alerts.destinations import BACKOFF_START, WebhookSender, log_alert
from proxy.alerts.rules import GROUP_KEYS, AlertRule, Webhook, load_rules
from proxy.alerts.window import FirstSeen, SlidingWindows
from proxy.audit.record import Event, QueryRecord
from proxy.audit.render import review_summary

log = logging.getLogger("pgwarden.alerts")

MAX_EVENT_SEQS = 50  # seqs listed in an alert event
_STATEMENT_PREVIEW = 200
# Fields of an approval step copied into its alert: (event key, alert key).
_REVIEW_FIELDS = (
    ("request_id", "request_id"),
    ("rule", "review_rule"),
    ("user", "requester"),
    ("database", "review_database"),
    ("statement", "statement"),
    ("links", "links"),
)


class TrailLike(Protocol):
    def add_listener(self, fn: Callable[[list[Event]], None]) -> None: ...

    def submit(self, event: Event) -> Any: ...


def iso(at: float) -> str:
    """Audit timestamp format: UTC, microseconds, ``Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(slots=True)
class _RuleState:
    rule: AlertRule
    windows: SlidingWindows | None
    seen: FirstSeen | None
    learn_until: float | None = None  # set from the first event observed


def _state(rule: AlertRule) -> _RuleState:
    if rule.threshold is not None:
        windows = SlidingWindows(rule.threshold.count, rule.threshold.window, rule.cooldown)
        return _RuleState(rule, windows, None)
    return _RuleState(rule, None, FirstSeen())


class AlertEngine:
    def __init__(
        self,
        rules: Sequence[AlertRule],
        proxy_id: str = "",
        *,
        webhook_backoff: float = BACKOFF_START,
    ) -> None:
        self.proxy_id = proxy_id
        self.webhook_backoff = webhook_backoff
        self._states = [_state(r) for r in rules]
        self.fired: dict[str, int] = {r.id: 0 for r in rules}
        self._senders: dict[Webhook, WebhookSender] = {}
        self._trail: TrailLike | None = None
        self._now: Callable[[], float] = time.time
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | Path],
        proxy_id: str = "",
        *,
        webhook_backoff: float = BACKOFF_START,
    ) -> AlertEngine:
        """Load rules from files/directories; raises ``AlertRulesError`` (file:line:col)."""
        return cls(load_rules(paths), proxy_id, webhook_backoff=webhook_backoff)

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        return tuple(s.rule for s in self._states)

    def reload_files(self, paths: Iterable[str | Path]) -> None:
        """Reload rules from files; on ``AlertRulesError`` the current rules stay."""
        self.swap_rules(load_rules(paths))

    def swap_rules(self, rules: Sequence[AlertRule]) -> None:
        """Install new rules (after a reload); rules whose definition did not change keep
        their windows and memory."""
        old = {s.rule: s for s in self._states}
        self._states = [old.get(r) or _state(r) for r in rules]
        self.fired = {r.id: self.fired.get(r.id, 0) for r in rules}

    # -- evaluation (pure apart from the rule memory) ------------------------------------

    def observe(self, event: dict[str, Any], at: float) -> list[dict[str, Any]]:
        """Feed one event seen at time ``at``; returns the alert events it fired."""
        if event.get("type") == "alert":
            return []  # alerts never feed alerts: no loops
        fired: list[dict[str, Any]] = []
        for state in self._states:
            rule = state.rule
            if not rule.filter.matches(event):
                continue
            alert = self._check(state, event, at)
            if alert is not None:
                self.fired[rule.id] = self.fired.get(rule.id, 0) + 1
                fired.append(alert)
        return fired

    def prime(self, events: Iterable[dict[str, Any]]) -> int:
        """Teach new_fingerprint rules the shapes in ``events`` without firing (e.g. the
        recent trail at start-up); returns how many events were read."""
        count = 0
        for event in events:
            count += 1
            for state in self._states:
                if state.seen is not None and state.rule.filter.matches(event):
                    state.seen.check(_pair(event))
        return count

    def _check(self, state: _RuleState, event: dict[str, Any], at: float) -> dict[str, Any] | None:
        rule = state.rule
        seq = event.get("seq")
        seq = seq if isinstance(seq, int) else 0
        if state.windows is not None:
            assert rule.threshold is not None
            group = str(event.get(GROUP_KEYS[rule.by]) or "") if rule.by else ""
            hit = state.windows.add(group, at, seq)
            if hit is None:
                return None
            where = f" for {rule.by}={group or '(none)'}" if rule.by else ""
            summary = f"{hit.count} matching events in {rule.threshold.window_text}{where}"
            if rule.description:
                summary += f": {rule.description}"
            return self._alert(
                rule,
                event,
                at,
                summary,
                rule.threshold.window_text,
                group if rule.by else None,
                hit.seqs,
            )
        if rule.condition == "each_event":
            summary = review_summary(event) or f"{event.get('type')} event"
            if rule.description:
                summary += f" ({rule.description})"
            return self._alert(rule, event, at, summary, None, None, (seq,))
        assert state.seen is not None
        if state.learn_until is None:
            state.learn_until = at + rule.learn_for
        pair = _pair(event)
        if not pair[1]:
            return None  # no fingerprint (unparsable statement, statement_text: none …)
        if not state.seen.check(pair) or at < state.learn_until:
            return None
        summary = f"user {pair[0] or '(none)'} ran a query shape never seen before"
        statement = event.get("statement")
        if isinstance(statement, str) and statement:
            preview = " ".join(statement.split())[:_STATEMENT_PREVIEW]
            summary += f": {preview}"
        if rule.description:
            summary += f" ({rule.description})"
        return self._alert(rule, event, at, summary, None, pair[0], (seq,))

    def _alert(
        self,
        rule: AlertRule,
        event: dict[str, Any],
        at: float,
        summary: str,
        window: str | None,
        group: str | None,
        seqs: Sequence[int],
    ) -> dict[str, Any]:
        alert = {
            "v": 1,
            "type": "alert",
            "ts": iso(at),
            "proxy_id": event.get("proxy_id") or self.proxy_id,
            "session_id": "",
            "user": "",
            "database": "",
            "application_name": "",
            "client_addr": "",
            "client_port": None,
            "alert": rule.id,
            "severity": rule.severity,
            "summary": summary,
            "window": window,
            "group": group,
            "events": list(seqs[-MAX_EVENT_SEQS:]),
        }
        if str(event.get("type", "")).startswith("review_"):
            # Approvers act on these: the request, what it runs, and where to decide.
            for key, name in _REVIEW_FIELDS:
                if event.get(key) is not None:
                    alert[name] = event[key]
            alert["break_glass"] = bool(event.get("break_glass"))
        return alert

    # -- live wiring ---------------------------------------------------------------------

    def attach(self, trail: TrailLike, now: Callable[[], float] = time.time) -> None:
        """Listen to ``trail``: fired alerts go back into it and out to their destinations.

        Call from the event loop thread (webhook deliveries run on that loop)."""
        self._trail = trail
        self._now = now
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        trail.add_listener(self.feed)

    def feed(self, events: list[Event]) -> None:
        """Observe ``events`` as they are written (the trail's listener; with workers, also
        the sibling workers' events, see proxy.workers.alerts)."""
        at = self._now()
        for event in events:
            if isinstance(event, QueryRecord):
                event = event.as_dict()  # (the rules read any field)
            for alert in self.observe(event, at):
                self._fire(alert)

    def _fire(self, alert: dict[str, Any]) -> None:
        rule = next((s.rule for s in self._states if s.rule.id == alert["alert"]), None)
        if self._trail is not None:
            # The trail owns what it is given (it adds seq and hashes); deliveries get a copy
            # that does not change under them.
            self._trail.submit(dict(alert))
        if rule is None:
            return
        for destination in rule.destinations:
            if destination == "log":
                log_alert(alert)
            else:
                self._send(destination, alert)

    def _send(self, hook: Webhook, alert: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None:
            log.error("alert %s: no event loop to deliver webhooks on", alert["alert"])
            return
        sender = self._senders.get(hook)
        if sender is None:
            sender = self._senders[hook] = WebhookSender(hook, self.webhook_backoff)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            sender.submit(alert)
        else:  # the trail called its listener from a writer thread
            loop.call_soon_threadsafe(sender.submit, alert)

    @property
    def senders(self) -> tuple[WebhookSender, ...]:
        return tuple(self._senders.values())

    async def drain(self) -> None:
        """Wait until every queued webhook delivery finished (tests, shutdown)."""
        for sender in list(self._senders.values()):
            await sender.drain()

    async def aclose(self) -> None:
        for sender in list(self._senders.values()):
            await sender.aclose()
        self._senders.clear()


def _pair(event: dict[str, Any]) -> tuple[str, str]:
    return (str(event.get("user") or ""), str(event.get("fingerprint") or ""))
