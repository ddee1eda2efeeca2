"""The ``pgwarden report`` aggregation: one streaming pass over audit events → a :class:`Report`.

Input is any ``Iterable[dict]`` of audit events (schema version 1, see docs/audit.md) already
restricted to the window and filters; the caller decides where they come from (JSONL files, the
central store). Memory is bounded by the number of distinct keys — users, databases,
applications, query shapes, sessions, rules, minutes of the timeline — never by the number of
events. Latency percentiles come from :class:`~proxy.review.sketch.LatencySketch` (within 1 %).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.audit.timeparse import iso_z
from proxy.review.reviews import REVIEW_TYPES, ApproverRow, ReviewRuleRow, ReviewTally
from proxy.review.sketch import LatencySketch
from proxy.review.sqlstates import condition_name

NO_FINGERPRINT = "-"  # shape key of statements the proxy could not fingerprint
_UNKNOWN_SQLSTATE = "?????"
_EXAMPLE_MAX = 4000  # characters of example statement kept per row
_MINUTE_KEY = 16  # "YYYY-MM-DDTHH:MM" prefix of an audit timestamp
_HOUR_KEY = 13
_MAX_TIMELINE_KEYS = 50_000  # past this many distinct minutes the timeline counts hours
_MAX_BARS = 120
_BUCKET_LADDER = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
_NON_ERROR_CLASSES = ("00", "01", "02")  # success, warning, no data


# ---------------------------------------------------------------- the report (values)


@dataclass(frozen=True, slots=True)
class Totals:
    events: int
    statements: int
    sessions: int
    users: int
    errors: int
    blocks: int
    flags: int
    auth_failures: int
    total_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    # Statements whose duration covers more than themselves (duration_scope message or
    # pipeline): counted, but left out of every latency figure.
    untimed: int = 0
    # Statements forwarded whose end pgwarden never saw (audit.write_ahead, outcome unknown):
    # counted as statements, not timed; they may or may not have run.
    unknown_outcomes: int = 0


@dataclass(frozen=True, slots=True)
class GroupRow:
    """Statements of one user, database or application."""

    key: str
    statements: int
    errors: int
    blocked: int
    flagged: int
    total_ms: float
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class ShapeRow:
    """One query shape (statements with the same fingerprint: same text up to literals)."""

    fingerprint: str
    example: str  # normalized when pglast can parse it (literals replaced by $n)
    count: int
    errors: int
    total_ms: float
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class ErrorRow:
    sqlstate: str
    condition: str
    count: int
    users: tuple[str, ...]
    example_error: str
    example_statement: str


@dataclass(frozen=True, slots=True)
class RuleRow:
    """Blocked or flagged statements attributed to one policy rule."""

    rule: str  # rule id; "(default)" when the decision named no rule (defaults.action, fail-closed)
    action: str  # the rule's own action (block or flag)
    severity: str
    count: int
    blocked: int  # of which the proxy actually blocked (monitor mode flags would-be blocks)
    flagged: int
    users: tuple[str, ...]
    first_ts: str
    last_ts: str
    example: str


@dataclass(frozen=True, slots=True)
class NewShapeRow:
    fingerprint: str
    example: str
    count: int
    first_ts: str
    first_user: str


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    proxy_id: str
    user: str
    database: str
    application: str
    client: str
    first_ts: str
    last_ts: str
    statements: int
    errors: int
    total_ms: float


@dataclass(frozen=True, slots=True)
class TimeBucket:
    start: str  # ISO-8601 UTC
    allow: int
    flag: int
    block: int


@dataclass(frozen=True, slots=True)
class LatencyBin:
    """Statements whose duration lies in (lower_ms, upper_ms]; the first bin starts at 0."""

    lower_ms: float
    upper_ms: float
    count: int


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: str
    since: str | None
    until: str | None
    first_event: str | None
    last_event: str | None
    proxy_ids: tuple[str, ...]
    filters: tuple[str, ...]
    top: int
    totals: Totals
    by_user: tuple[GroupRow, ...]
    by_database: tuple[GroupRow, ...]
    by_application: tuple[GroupRow, ...]
    shapes: int  # distinct query shapes in the window
    shapes_by_count: tuple[ShapeRow, ...]
    shapes_by_time: tuple[ShapeRow, ...]
    errors: tuple[ErrorRow, ...]
    rules: tuple[RuleRow, ...]
    new_shapes_checked: bool  # False when the pass over earlier events was skipped
    new_shapes_total: int
    new_shapes: tuple[NewShapeRow, ...]
    sessions_by_statements: tuple[SessionRow, ...]
    sessions_by_time: tuple[SessionRow, ...]
    timeline_bucket_seconds: int
    timeline: tuple[TimeBucket, ...]
    latency_bins: tuple[LatencyBin, ...]
    reviews: tuple[ReviewRuleRow, ...] = ()  # approval requests by review rule
    approvers: tuple[ApproverRow, ...] = ()
    # Statements per end identity, keyed "identity (source)"; sessions without one are left out.
    by_identity: tuple[GroupRow, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; keys are a stable contract (``report_version`` 1)."""
        return {"report_version": 1, **dataclasses.asdict(self)}


# ---------------------------------------------------------------- per-key accumulators


class _Group:
    __slots__ = ("blocked", "errors", "flagged", "sketch", "untimed")

    def __init__(self) -> None:
        self.errors = 0
        self.blocked = 0
        self.flagged = 0
        self.untimed = 0
        self.sketch = LatencySketch()

    def row(self, key: str) -> GroupRow:
        return GroupRow(
            key=key,
            statements=self.sketch.count + self.untimed,
            errors=self.errors,
            blocked=self.blocked,
            flagged=self.flagged,
            total_ms=self.sketch.total,
            p95_ms=self.sketch.quantile(0.95),
        )


class _Shape:
    __slots__ = ("errors", "example", "first_ts", "first_user", "sketch")

    def __init__(self, example: str, ts: str, user: str) -> None:
        self.errors = 0
        self.example = example
        self.first_ts = ts
        self.first_user = user
        self.sketch = LatencySketch()


class _Session:
    __slots__ = (
        "application",
        "client",
        "database",
        "errors",
        "first_ts",
        "last_ts",
        "statements",
        "total_ms",
        "user",
    )

    def __init__(self, event: dict[str, Any], ts: str) -> None:
        self.user = str(event.get("user") or "")
        self.database = str(event.get("database") or "")
        self.application = str(event.get("application_name") or "")
        self.client = _client(event)
        self.first_ts = ts
        self.last_ts = ts
        self.statements = 0
        self.errors = 0
        self.total_ms = 0.0


class _Rule:
    __slots__ = (
        "action",
        "blocked",
        "count",
        "example",
        "first_ts",
        "flagged",
        "last_ts",
        "severity",
        "users",
    )

    def __init__(self, action: str, severity: str, example: str, ts: str) -> None:
        self.action = action
        self.severity = severity
        self.example = example
        self.first_ts = ts
        self.last_ts = ts
        self.count = 0
        self.blocked = 0
        self.flagged = 0
        self.users: set[str] = set()


class _Error:
    __slots__ = ("count", "example_error", "example_statement", "users")

    def __init__(self, error: str, statement: str) -> None:
        self.count = 0
        self.example_error = error
        self.example_statement = statement
        self.users: set[str] = set()


# ---------------------------------------------------------------- the builder


class ReportBuilder:
    """Feed events one by one with :meth:`add`; :meth:`build` makes the :class:`Report`.

    ``known_fingerprints`` are the shapes seen before the window (see :func:`seen_fingerprints`);
    pass None to skip the first-seen section.
    """

    def __init__(self, *, top: int = 10, known_fingerprints: set[str] | None = None) -> None:
        self.top = top
        self._known = known_fingerprints
        self._events = 0
        self._auth_failures = 0
        self._unknown_outcomes = 0
        self._first_ts: str | None = None
        self._last_ts: str | None = None
        self._proxy_ids: set[str] = set()
        self._users: set[str] = set()
        self._overall = _Group()
        self._by_user: dict[str, _Group] = {}
        self._by_database: dict[str, _Group] = {}
        self._by_application: dict[str, _Group] = {}
        self._by_identity: dict[str, _Group] = {}
        self._shapes: dict[str, _Shape] = {}
        self._errors: dict[str, _Error] = {}
        self._rules: dict[str, _Rule] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._timeline: dict[str, list[int]] = {}
        self._timeline_key = _MINUTE_KEY
        self._reviews = ReviewTally()

    def add_all(self, events: Iterable[dict[str, Any]]) -> ReportBuilder:
        for event in events:
            self.add(event)
        return self

    def add(self, event: dict[str, Any]) -> None:
        self._events += 1
        ts = str(event.get("ts") or "")
        if ts:
            if self._first_ts is None or ts < self._first_ts:
                self._first_ts = ts
            if self._last_ts is None or ts > self._last_ts:
                self._last_ts = ts
        proxy_id = str(event.get("proxy_id") or "")
        self._proxy_ids.add(proxy_id)
        user = str(event.get("user") or "")
        self._users.add(user)
        kind = event.get("type")
        if kind == "auth_failure":
            self._auth_failures += 1
            return
        session_id = event.get("session_id")
        session: _Session | None = None
        if session_id:
            key = (proxy_id, str(session_id))
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(event, ts)
            elif ts:
                if ts < session.first_ts or not session.first_ts:
                    session.first_ts = ts
                if ts > session.last_ts:
                    session.last_ts = ts
        if kind == "query":
            self._add_query(event, ts, user, session)
        elif kind in REVIEW_TYPES:
            self._reviews.add(event)

    def _add_query(
        self, event: dict[str, Any], ts: str, user: str, session: _Session | None
    ) -> None:
        outcome = event.get("outcome")
        duration = event.get("duration_ms")
        duration = float(duration) if isinstance(duration, int | float) else 0.0
        # Only a duration measured for the statement alone is a latency (docs/audit-log.md).
        timed = event.get("duration_scope", "statement") == "statement" and outcome is None
        if outcome is not None:
            self._unknown_outcomes += 1
        decision = event.get("decision")
        action = decision.get("action", "allow") if isinstance(decision, dict) else "allow"
        error = event.get("error")
        sqlstate = event.get("sqlstate")
        failed = error is not None or (
            bool(sqlstate) and str(sqlstate)[:2] not in _NON_ERROR_CLASSES
        )
        blocked = action == "block"
        flagged = action == "flag"
        statement = event.get("statement")
        statement = statement if isinstance(statement, str) else ""

        groups: tuple[_Group, ...] = (
            self._overall,
            _group(self._by_user, user),
            _group(self._by_database, str(event.get("database") or "")),
            _group(self._by_application, str(event.get("application_name") or "")),
        )
        identity = event.get("identity")
        if identity and isinstance(identity, str):
            # The source is part of the key: a name a client chose is not the same as one a
            # certificate proved.
            source = event.get("identity_source") or "unknown"
            groups += (_group(self._by_identity, f"{identity} ({source})"),)
        for group in groups:
            if timed:
                group.sketch.add(duration)
            else:
                group.untimed += 1
            if failed:
                group.errors += 1
            if blocked:
                group.blocked += 1
            elif flagged:
                group.flagged += 1

        fingerprint = str(event.get("fingerprint") or NO_FINGERPRINT)
        shape = self._shapes.get(fingerprint)
        if shape is None:
            shape = self._shapes[fingerprint] = _Shape(statement[:_EXAMPLE_MAX], ts, user)
        elif not shape.example and statement:
            shape.example = statement[:_EXAMPLE_MAX]
        if timed:
            shape.sketch.add(duration)

        if session is not None:
            session.statements += 1
            if timed:
                session.total_ms += duration
        if failed:
            shape.errors += 1
            if session is not None:
                session.errors += 1
            self._add_error(str(sqlstate or _UNKNOWN_SQLSTATE), str(error or ""), statement, user)
        if (blocked or flagged) and isinstance(decision, dict):
            self._add_rules(decision, blocked, statement, user, ts)

        if ts:
            key = ts[: self._timeline_key]
            counts = self._timeline.get(key)
            if counts is None:
                if len(self._timeline) >= _MAX_TIMELINE_KEYS and self._timeline_key > _HOUR_KEY:
                    self._coarsen_timeline()
                    key = ts[: self._timeline_key]
                counts = self._timeline.setdefault(key, [0, 0, 0])
            counts[2 if blocked else 1 if flagged else 0] += 1

    def _add_error(self, sqlstate: str, error: str, statement: str, user: str) -> None:
        entry = self._errors.get(sqlstate)
        if entry is None:
            entry = self._errors[sqlstate] = _Error(error, statement[:_EXAMPLE_MAX])
        entry.count += 1
        entry.users.add(user)

    def _add_rules(
        self, decision: dict[str, Any], blocked: bool, statement: str, user: str, ts: str
    ) -> None:
        rules = [r for r in decision.get("rules") or () if isinstance(r, dict)]
        matched = [r for r in rules if r.get("action") in ("flag", "block")]
        if not matched:
            intended = decision.get("intended") or decision.get("action") or ""
            matched = [{"id": "(default)", "action": intended, "severity": ""}]
        for rule in matched:
            rule_id = str(rule.get("id") or "(unnamed)")
            entry = self._rules.get(rule_id)
            if entry is None:
                entry = self._rules[rule_id] = _Rule(
                    str(rule.get("action") or ""),
                    str(rule.get("severity") or ""),
                    statement[:_EXAMPLE_MAX],
                    ts,
                )
            entry.count += 1
            if blocked:
                entry.blocked += 1
            else:
                entry.flagged += 1
            entry.users.add(user)
            if ts:
                entry.first_ts = min(entry.first_ts, ts) if entry.first_ts else ts
                entry.last_ts = max(entry.last_ts, ts)

    def _coarsen_timeline(self) -> None:
        coarse: dict[str, list[int]] = {}
        for key, counts in self._timeline.items():
            target = coarse.setdefault(key[:_HOUR_KEY], [0, 0, 0])
            for i in range(3):
                target[i] += counts[i]
        self._timeline = coarse
        self._timeline_key = _HOUR_KEY

    # ------------------------------------------------------------ build

    def build(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Sequence[str] = (),
        generated_at: datetime | None = None,
        normalize: bool = True,
    ) -> Report:
        top = self.top
        example = _normalizer() if normalize else _identity
        overall = self._overall.sketch
        shapes = sorted(self._shapes.items(), key=lambda kv: (-kv[1].sketch.count, kv[0]))
        by_time = sorted(self._shapes.items(), key=lambda kv: (-kv[1].sketch.total, kv[0]))
        new_shapes: list[tuple[str, _Shape]] = []
        if self._known is not None:
            new_shapes = [
                (fp, s)
                for fp, s in self._shapes.items()
                if fp != NO_FINGERPRINT and fp not in self._known
            ]
            new_shapes.sort(key=lambda kv: (kv[1].first_ts, kv[0]))
        sessions = list(self._sessions.items())
        bucket_seconds, timeline = self._timeline_buckets()
        return Report(
            generated_at=iso_z(generated_at or datetime.now(UTC)),
            since=iso_z(since) if since else None,
            until=iso_z(until) if until else None,
            first_event=self._first_ts,
            last_event=self._last_ts,
            proxy_ids=tuple(sorted(p for p in self._proxy_ids if p)),
            filters=tuple(filters),
            top=top,
            totals=Totals(
                events=self._events,
                statements=overall.count + self._overall.untimed,
                sessions=len(self._sessions),
                users=len({u for u in self._users if u}),
                errors=self._overall.errors,
                blocks=self._overall.blocked,
                flags=self._overall.flagged,
                auth_failures=self._auth_failures,
                total_ms=overall.total,
                p50_ms=overall.quantile(0.50),
                p95_ms=overall.quantile(0.95),
                p99_ms=overall.quantile(0.99),
                untimed=self._overall.untimed,
                unknown_outcomes=self._unknown_outcomes,
            ),
            by_user=_group_rows(self._by_user),
            by_database=_group_rows(self._by_database),
            by_application=_group_rows(self._by_application),
            by_identity=_group_rows(self._by_identity),
            shapes=len(self._shapes),
            shapes_by_count=tuple(_shape_row(fp, s, example) for fp, s in shapes[:top]),
            shapes_by_time=tuple(_shape_row(fp, s, example) for fp, s in by_time[:top]),
            errors=tuple(
                ErrorRow(
                    sqlstate=code,
                    condition=condition_name(code),
                    count=e.count,
                    users=tuple(sorted(e.users)),
                    example_error=e.example_error,
                    example_statement=e.example_statement,
                )
                for code, e in sorted(self._errors.items(), key=lambda kv: (-kv[1].count, kv[0]))
            ),
            rules=tuple(
                RuleRow(
                    rule=rule_id,
                    action=r.action,
                    severity=r.severity,
                    count=r.count,
                    blocked=r.blocked,
                    flagged=r.flagged,
                    users=tuple(sorted(r.users)),
                    first_ts=r.first_ts,
                    last_ts=r.last_ts,
                    example=r.example,
                )
                for rule_id, r in sorted(self._rules.items(), key=lambda kv: (-kv[1].count, kv[0]))
            ),
            new_shapes_checked=self._known is not None,
            new_shapes_total=len(new_shapes),
            new_shapes=tuple(
                NewShapeRow(
                    fingerprint=fp,
                    example=example(s.example),
                    count=s.sketch.count,
                    first_ts=s.first_ts,
                    first_user=s.first_user,
                )
                for fp, s in new_shapes[:top]
            ),
            sessions_by_statements=tuple(
                _session_row(k, s)
                for k, s in sorted(sessions, key=lambda kv: (-kv[1].statements, kv[0]))[:top]
            ),
            sessions_by_time=tuple(
                _session_row(k, s)
                for k, s in sorted(sessions, key=lambda kv: (-kv[1].total_ms, kv[0]))[:top]
            ),
            timeline_bucket_seconds=bucket_seconds,
            timeline=timeline,
            latency_bins=latency_bins(overall),
            reviews=self._reviews.rules(),
            approvers=self._reviews.approvers(),
        )

    def _timeline_buckets(self) -> tuple[int, tuple[TimeBucket, ...]]:
        if not self._timeline:
            return 60, ()
        unit = 60 if self._timeline_key == _MINUTE_KEY else 3600
        suffix = ":00" if unit == 60 else ":00:00"
        points = {
            datetime.fromisoformat(key + suffix).replace(tzinfo=UTC): counts
            for key, counts in self._timeline.items()
        }
        first, last = min(points), max(points)
        span = (last - first).total_seconds() + unit
        width = next(
            (w for w in _BUCKET_LADDER if w >= unit and span / w <= _MAX_BARS), _BUCKET_LADDER[-1]
        )
        epoch = datetime(1970, 1, 1, tzinfo=UTC)

        def start_of(moment: datetime) -> datetime:
            return epoch + timedelta(seconds=int((moment - epoch).total_seconds()) // width * width)

        start = start_of(first)
        bars: list[list[int]] = [
            [0, 0, 0] for _ in range(int((start_of(last) - start).total_seconds()) // width + 1)
        ]
        for moment, counts in points.items():
            bar = bars[int((start_of(moment) - start).total_seconds()) // width]
            for i in range(3):
                bar[i] += counts[i]
        return width, tuple(
            TimeBucket(iso_z(start + timedelta(seconds=i * width)), *bar)
            for i, bar in enumerate(bars)
        )


def seen_fingerprints(events: Iterable[dict[str, Any]], before: datetime | None) -> set[str]:
    """Fingerprints of the ``query`` events earlier than ``before``: one streaming pass whose
    memory is the set of distinct shapes (about 80 bytes each)."""
    limit = iso_z(before) if before else None
    seen: set[str] = set()
    for event in events:
        if event.get("type") != "query":
            continue
        if limit is not None and str(event.get("ts") or "") >= limit:
            continue
        fingerprint = event.get("fingerprint")
        if fingerprint:
            seen.add(str(fingerprint))
    return seen


def split_history(
    events: Iterable[dict[str, Any]], since: datetime, known: set[str]
) -> Iterator[dict[str, Any]]:
    """Yield the events at or after ``since``; add the fingerprints of earlier ``query`` events
    to ``known``. Lets one pass over a whole trail feed both the window and the first-seen set
    (``known`` is complete once the iterator is exhausted, i.e. before :meth:`build`)."""
    limit = iso_z(since)
    for event in events:
        if str(event.get("ts") or "") < limit:
            if event.get("type") == "query":
                fingerprint = event.get("fingerprint")
                if fingerprint:
                    known.add(str(fingerprint))
            continue
        yield event


def build_report(
    events: Iterable[dict[str, Any]],
    *,
    top: int = 10,
    known_fingerprints: set[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Sequence[str] = (),
    generated_at: datetime | None = None,
) -> Report:
    builder = ReportBuilder(top=top, known_fingerprints=known_fingerprints).add_all(events)
    return builder.build(since=since, until=until, filters=filters, generated_at=generated_at)


# ---------------------------------------------------------------- helpers


def latency_bins(sketch: LatencySketch) -> tuple[LatencyBin, ...]:
    """Re-bin a sketch on a 1-2-5 scale (…, 0.5, 1, 2, 5, 10 ms, …) for the histogram chart.

    A sketch bucket that straddles a 1-2-5 edge goes to the bin holding its upper bound, so a
    count can land one bin high by at most 2 % of the edge value.
    """
    if sketch.count == 0:
        return ()
    edges = _edges(sketch.max)
    counts = [0] * len(edges)
    for _lower, upper, n in sketch.buckets():
        for i, edge in enumerate(edges):
            if upper <= edge or i == len(edges) - 1:
                counts[i] += n
                break
    first = next(i for i, c in enumerate(counts) if c)
    bins = []
    for i in range(first, len(edges)):
        bins.append(LatencyBin(edges[i - 1] if i else 0.0, edges[i], counts[i]))
    return tuple(bins)


def _edges(maximum: float) -> list[float]:
    edges: list[float] = []
    scale = 0.01
    while True:
        for step in (1.0, 2.0, 5.0):
            edge = round(step * scale, 6)
            edges.append(edge)
            if edge >= maximum * (1 + 0.02) or len(edges) > 40:
                return edges
        scale *= 10


def _group(table: dict[str, _Group], key: str) -> _Group:
    group = table.get(key)
    if group is None:
        group = table[key] = _Group()
    return group


def _group_rows(table: dict[str, _Group]) -> tuple[GroupRow, ...]:
    ordered = sorted(table.items(), key=lambda kv: (-kv[1].sketch.count, kv[0]))
    return tuple(group.row(key) for key, group in ordered)


def _shape_row(fingerprint: str, shape: _Shape, example: Any) -> ShapeRow:
    sketch = shape.sketch
    return ShapeRow(
        fingerprint=fingerprint,
        example=example(shape.example),
        count=sketch.count,
        errors=shape.errors,
        total_ms=sketch.total,
        mean_ms=sketch.mean(),
        p50_ms=sketch.quantile(0.50),
        p95_ms=sketch.quantile(0.95),
        p99_ms=sketch.quantile(0.99),
        max_ms=sketch.max if sketch.count else None,
    )


def _session_row(key: tuple[str, str], s: _Session) -> SessionRow:
    return SessionRow(
        session_id=key[1],
        proxy_id=key[0],
        user=s.user,
        database=s.database,
        application=s.application,
        client=s.client,
        first_ts=s.first_ts,
        last_ts=s.last_ts,
        statements=s.statements,
        errors=s.errors,
        total_ms=s.total_ms,
    )


def _client(event: dict[str, Any]) -> str:
    addr = str(event.get("client_addr") or "")
    port = event.get("client_port")
    return f"{addr}:{port}" if addr and port and addr != "unix" else addr


def _identity(text: str) -> str:
    return text


def _normalizer() -> Any:
    """Replace literals by $n in example statements (pglast); keep text pglast rejects."""
    from pglast import parser

    def normalize(text: str) -> str:
        if not text:
            return text
        try:
            return str(parser.normalize(text))
        except Exception:  # pglast raises several types for text it cannot parse
            return text

    return normalize
