"""Prometheus metrics of one proxy, in a registry of its own (tests run several proxies).

Per-statement metrics come from the audit trail's event stream (a listener called after each
written batch), so the session hot path makes no metric calls at all. Everything else —
connections, counters kept by the server, the audit queue, the store shipper — is read from
the live objects when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.audit.record import Event, QueryRecord
from proxy.buildinfo import build_info
from proxy.state import ServerState

# Seconds; a proxy's statements range from sub-millisecond point reads to minutes of DDL.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
)  # fmt: skip


class TrailLike(Protocol):
    @property
    def pending(self) -> int: ...

    @property
    def healthy(self) -> bool: ...

    def add_listener(self, fn: Callable[[list[Event]], None]) -> None: ...

    def submit(self, event: Event) -> None: ...


class ShipperLike(Protocol):
    @property
    def healthy(self) -> bool: ...

    @property
    def backlog(self) -> int: ...

    @property
    def stats(self) -> dict[str, float]: ...

    @property
    def conflicts(self) -> tuple[str, ...]: ...


class _LiveCollector(Collector):
    """Values read on scrape from the server state, the trail and the shipper."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        state = self.m.state
        c = state.counters
        yield _gauge("pgwarden_client_connections", "client sessions open now", len(state.sessions))
        yield _gauge(
            "pgwarden_start_time_seconds", "when this proxy started (unix time)", state.started_at
        )
        info = build_info()
        build = GaugeMetricFamily(
            "pgwarden_build_info", "always 1; the labels say which build runs", labels=list(info)
        )
        build.add_metric(list(info.values()), 1.0)
        yield build
        for name, doc, value in (
            ("connections", "client connections accepted", c.connections_total),
            (
                "connections_rejected",
                "client connections refused before a session existed",
                c.connections_rejected,
            ),
            (
                "upstream_connect_failures",
                "failed connections to the upstream server",
                c.upstream_connect_failures,
            ),
            ("policy_reloads", "policy reloads that succeeded", c.policy_reloads),
            (
                "policy_reload_failures",
                "policy reloads rejected (old policy kept)",
                c.policy_reload_failures,
            ),
            ("cancels_forwarded", "CancelRequests forwarded upstream", c.cancels_forwarded),
            (
                "logins_throttled",
                "logins refused by the rate limiter (too many recent failures)",
                c.logins_throttled,
            ),
            (
                "cancels_dropped",
                "CancelRequests dropped (unknown key, wrong secret, nothing running)",
                c.cancels_dropped,
            ),
        ):
            yield _counter(f"pgwarden_{name}", doc, value)
        protocol = CounterMetricFamily(
            "pgwarden_protocol_errors", "wire protocol violations", labels=["peer"]
        )
        protocol.add_metric(["client"], c.protocol_errors_client)
        protocol.add_metric(["server"], c.protocol_errors_server)
        yield protocol

        trail = self.m.trail
        yield _gauge(
            "pgwarden_audit_queue_depth", "audit events submitted, not yet written", trail.pending
        )
        yield _gauge(
            "pgwarden_audit_trail_healthy",
            "1 when the last audit write succeeded",
            float(trail.healthy),
        )
        stats = getattr(trail, "stats", None)
        if stats is not None:
            for attr, doc in (
                ("events_written", "audit events written to the local trail"),
                ("write_errors", "failed writes to the local trail"),
                ("rotations", "audit file rotations"),
                ("bytes_written", "bytes written to the local trail"),
            ):
                stat = getattr(stats, attr, None)
                if isinstance(stat, int | float):
                    yield _counter(f"pgwarden_audit_{attr}", doc, stat)
            flush = getattr(stats, "last_flush_seconds", None)
            if isinstance(flush, int | float):
                yield _gauge(
                    "pgwarden_audit_last_flush_seconds",
                    "time the last audit write took (local sink latency)",
                    flush,
                )

        shipper = self.m.shipper
        if shipper is not None:
            s = shipper.stats
            yield _gauge(
                "pgwarden_store_backlog_events",
                "audit events in the local trail not yet in the store",
                shipper.backlog,
            )
            yield _gauge(
                "pgwarden_store_healthy",
                "1 when the store accepted the last batch",
                float(shipper.healthy),
            )
            yield _gauge(
                "pgwarden_store_identity_conflicts",
                "other trails shipping under this proxy_id, or holding other records under this"
                " trail's id (each is logged; see /readyz)",
                s.get("identity_conflicts", 0.0),
            )
            yield _counter(
                "pgwarden_store_shipped_events",
                "audit events shipped to the store",
                s.get("shipped", 0.0),
            )
            yield _counter(
                "pgwarden_store_batches", "batches committed to the store", s.get("batches", 0.0)
            )
            yield _counter(
                "pgwarden_store_errors", "failed store connections or batches", s.get("errors", 0.0)
            )
            yield _counter(
                "pgwarden_store_rejected_events",
                "events the store refused (logged, skipped)",
                s.get("rejected", 0.0),
            )
            yield _counter(
                "pgwarden_store_read_back_events",
                "events the shipper read back from the local files instead of taking them from"
                " memory (after a start or an outage, or when its memory queue was full)",
                s.get("read_back", 0.0),
            )
            yield _counter(
                "pgwarden_store_ship_seconds",
                "time spent committing batches (divide by batches for latency)",
                s.get("ship_seconds", 0.0),
            )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _StreamCollector(Collector):
    """Per-statement metrics, counted in plain ints by the trail listener (a few hundred ns
    per event, no locks: listener and scrape both run on the event loop thread)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        statements = CounterMetricFamily(
            "pgwarden_statements", "statements executed, by class and policy action",
            labels=["class", "action"],
        )  # fmt: skip
        for (klass, action), count in sorted(m.statement_counts.items()):
            statements.add_metric([klass, action], count)
        yield statements
        buckets = []
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, m.latency_buckets, strict=False):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        buckets.append(("+Inf", m.latency_count))
        yield HistogramMetricFamily(
            "pgwarden_statement_duration_seconds", "statement latency seen by the proxy",
            buckets=buckets, sum_value=m.latency_sum,
        )  # fmt: skip
        errors = CounterMetricFamily(
            "pgwarden_statement_errors", "failed statements by SQLSTATE class",
            labels=["sqlstate_class"],
        )  # fmt: skip
        for cls, count in sorted(m.error_counts.items()):
            errors.add_metric([cls], count)
        yield errors
        yield _counter("pgwarden_auth_failures", "failed client authentications", m.auth_failures)
        yield _counter("pgwarden_sessions_started", "client sessions started", m.sessions_started)
        yield _counter("pgwarden_sessions_ended", "client sessions ended", m.sessions_ended)
        alerts = CounterMetricFamily(
            "pgwarden_alerts_fired", "alerts fired, by alert id and severity",
            labels=["alert", "severity"],
        )  # fmt: skip
        for (alert, severity), count in sorted(m.alert_counts.items()):
            alerts.add_metric([alert, severity], count)
        yield alerts


def _bound(value: float) -> str:
    return repr(float(value))


class Metrics:
    """The registry plus the trail listener that feeds the per-statement metrics."""

    def __init__(
        self, state: ServerState, trail: TrailLike, shipper: ShipperLike | None = None
    ) -> None:
        self.state = state
        self.trail = trail
        self.shipper = shipper
        self.statement_counts: dict[tuple[str, str], int] = {}
        self.error_counts: dict[str, int] = {}
        self.alert_counts: dict[tuple[str, str], int] = {}
        self.latency_buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.auth_failures = 0
        self.sessions_started = 0
        self.sessions_ended = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StreamCollector(self))
        self.registry.register(_LiveCollector(self))
        trail.add_listener(self.observe)

    def attach_shipper(self, shipper: ShipperLike | None) -> None:
        self.shipper = shipper

    def observe(self, events: list[Event]) -> None:
        """The trail listener: one pass over a written batch."""
        for event in events:
            kind = event.get("type")
            if kind == "query":
                if type(event) is QueryRecord and not event.dirty:
                    self._count_query(event.statement_class, event.action, event.duration_ms, None)
                else:
                    self._query(event)
            elif kind == "session_start":
                self.sessions_started += 1
            elif kind == "session_end":
                self.sessions_ended += 1
            elif kind == "auth_failure":
                self.auth_failures += 1
            elif kind == "alert":
                key = (str(event.get("alert")), str(event.get("severity")))
                self.alert_counts[key] = self.alert_counts.get(key, 0) + 1

    def _query(self, event: Event) -> None:
        decision = event.get("decision")
        action = decision.get("action") if isinstance(decision, dict) else None
        duration = event.get("duration_ms")
        sqlstate = event.get("sqlstate")
        self._count_query(
            event.get("class"),
            action,
            duration if isinstance(duration, int | float) else None,
            sqlstate if isinstance(sqlstate, str) else None,
        )

    def _count_query(
        self, cls: object, action: object, duration: float | None, sqlstate: str | None
    ) -> None:
        key = (str(cls or "unknown"), str(action or "allow"))
        counts = self.statement_counts
        counts[key] = counts.get(key, 0) + 1
        if duration is not None:
            seconds = duration / 1000.0
            index = bisect_left(LATENCY_BUCKETS, seconds)
            if index < len(LATENCY_BUCKETS):
                self.latency_buckets[index] += 1
            self.latency_sum += seconds
            self.latency_count += 1
        if sqlstate:
            prefix = sqlstate[:2]
            self.error_counts[prefix] = self.error_counts.get(prefix, 0) + 1

    def exposition(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return bytes(generate_latest(self.registry))
