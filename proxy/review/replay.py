"""``pgwarden policy replay``: what a new policy would have decided for recorded statements.

Each recorded ``query`` event is judged again: its statement text is analysed with pglast
(:func:`proxy.sql.extract.analyze`) and evaluated by the new :class:`~proxy.policy.loader.Policy`
with the recorded identity and the event's ``ts`` as "now" (so time-window rules see the time the
statement really ran). The new action is compared with the recorded ``decision.action``
(``allow`` when the event has no decision: no policy was loaded then).

Some events cannot be judged, and the result says how many and shows examples:

* ``no_statement``: the trail was written with ``audit.statement_text: none`` (no text recorded);
* ``unparsable``: PostgreSQL's grammar rejects the recorded text (the proxy may have seen it under
  other session settings, e.g. ``standard_conforming_strings=off``, which the trail does not keep).

Events whose text was recorded *normalized* (``audit.statement_text: normalized``: literals
replaced by ``$1``, ``$2`` …) are judged — rules on commands, tables, functions, missing WHERE
are unaffected — but counted and marked, because rules that look at literal values cannot see them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, Protocol

from pglast import parser as pg_parser

from proxy.audit.timeparse import iso_z, parse_ts
from proxy.identity import Identity, IdentitySource
from proxy.policy.decision import ACTIONS, Decision
from proxy.sql.facts import QueryFacts

ChangeKind = Literal[
    "newly_blocked", "newly_flagged", "no_longer_blocked", "no_longer_flagged", "unchanged"
]
CHANGE_KINDS: tuple[ChangeKind, ...] = (
    "newly_blocked",
    "newly_flagged",
    "no_longer_blocked",
    "no_longer_flagged",
)
NotJudged = Literal["no_statement", "unparsable"]
NOT_JUDGED_REASONS: dict[str, str] = {
    "no_statement": "statement text not recorded (audit.statement_text: none)",
    "unparsable": "statement text rejected by PostgreSQL's grammar",
}
NORMALIZED_NOTE = "normalized: literal-dependent rules may differ"
_FACTS_CACHE = 8192


class PolicyLike(Protocol):
    def evaluate(
        self, identity: Identity, facts: QueryFacts, now: datetime | None = None
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded statement whose outcome differs (or could not be judged: new is "")."""

    ts: str
    user: str
    database: str
    session_id: str
    statement: str
    old: str
    new: str
    rules: tuple[str, ...]  # rules named by the new decision
    normalized: bool = False
    reason: str = ""  # for events not judged
    identity: str = ""  # the end identity the statement ran under ('' none)


@dataclass(frozen=True, slots=True)
class RuleCount:
    rule: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class ReplayResult:
    policies: tuple[str, ...]
    since: str | None
    until: str | None
    statements: int  # query events considered
    judged: int
    normalized: int  # judged, but on normalized text
    not_judged: dict[str, int]  # reason → count
    changes: dict[str, int]  # ChangeKind → count ("unchanged" included)
    transitions: dict[str, int]  # "old->new" → count, all nine pairs
    rules: tuple[RuleCount, ...]  # rules of the new policy that matched, by count
    examples: dict[str, tuple[Change, ...]]  # ChangeKind → up to N examples
    not_judged_examples: tuple[Change, ...]
    filters: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"replay_version": 1, **dataclasses.asdict(self)}


def change_kind(old: str, new: str) -> ChangeKind:
    if old == new:
        return "unchanged"
    if new == "block":
        return "newly_blocked"
    if old == "block":
        return "no_longer_blocked"
    if new == "flag":
        return "newly_flagged"
    return "no_longer_flagged"


def looks_normalized(statement: str, protocol: str, params: object) -> bool:
    """Whether recorded text had its literals replaced by ``$n`` placeholders.

    Placeholders are genuine in extended-protocol statements (the client wrote them) unless
    there are more of them than recorded parameters, and in ``PREPARE … AS`` bodies. Anywhere
    else a placeholder means the proxy normalized the text. Tokens come from PostgreSQL's own
    scanner, so ``'$1'`` inside a string literal or a dollar-quoted body does not count.
    """
    if "$" not in statement:
        return False
    try:
        tokens = pg_parser.scan(statement)
    except Exception:  # pglast raises its own error types for unscannable text
        return False
    names = [t.name for t in tokens]
    if "PARAM" not in names or "PREPARE" in names:
        return False
    if protocol in ("extended", "function_call"):
        if not isinstance(params, list):
            return False
        highest = max(
            int(statement[t.start + 1 : t.end + 1])
            for t in tokens
            if t.name == "PARAM" and statement[t.start + 1 : t.end + 1].isdigit()
        )
        return highest > len(params)
    return True


class Replayer:
    """Feed recorded events with :meth:`add`; :meth:`result` summarises. Streams: memory is the
    examples, the counters and a bounded cache of analysed statement texts."""

    def __init__(
        self,
        policy: PolicyLike,
        analyze: Callable[[str], QueryFacts],
        *,
        examples: int = 5,
    ) -> None:
        self._policy = policy
        self._analyze = lru_cache(maxsize=_FACTS_CACHE)(analyze)
        self._limit = examples
        self._statements = 0
        self._judged = 0
        self._normalized = 0
        self._not_judged: Counter[str] = Counter()
        self._changes: Counter[str] = Counter()
        self._transitions: Counter[str] = Counter()
        self._rules: Counter[tuple[str, str]] = Counter()
        self._examples: dict[str, list[Change]] = {k: [] for k in CHANGE_KINDS}
        self._not_judged_examples: list[Change] = []

    def add_all(self, events: Iterable[dict[str, Any]]) -> Replayer:
        for event in events:
            self.add(event)
        return self

    def add(self, event: dict[str, Any]) -> None:
        if event.get("type") != "query":
            return
        self._statements += 1
        decision = event.get("decision")
        old = str(decision.get("action") or "allow") if isinstance(decision, dict) else "allow"
        # A statement of a multi-statement message: compare with what it got itself (the
        # message's decision is what was enforced for all of them).
        own = event.get("statement_action")
        if isinstance(own, str):
            old = own
        statement = event.get("statement")
        if not isinstance(statement, str) or not statement.strip():
            self._skip(event, "no_statement", old)
            return
        facts = self._analyze(statement)
        if not facts.parsable:
            self._skip(event, "unparsable", old)
            return
        end = event.get("identity")
        end = end if isinstance(end, str) else ""
        identity = Identity(
            user=str(event.get("user") or ""),
            database=str(event.get("database") or ""),
            application_name=str(event.get("application_name") or ""),
            client_addr=str(event.get("client_addr") or ""),
            client_port=_int_or_none(event.get("client_port")),
            session_id=str(event.get("session_id") or ""),
            end_identity=end,
            identity_source=_identity_source(event) if end else None,
        )
        ts = str(event.get("ts") or "")
        now = parse_ts(ts) if ts else None
        new_decision = self._policy.evaluate(identity, facts, now)
        new = new_decision.action
        normalized = looks_normalized(
            statement, str(event.get("protocol") or "simple"), event.get("params")
        )
        self._judged += 1
        if normalized:
            self._normalized += 1
        for rule in new_decision.rules:
            self._rules[(rule.id, rule.action)] += 1
        kind = change_kind(old, new)
        self._changes[kind] += 1
        self._transitions[f"{old}->{new}"] += 1
        if kind != "unchanged" and len(self._examples[kind]) < self._limit:
            self._examples[kind].append(
                _change(
                    event,
                    statement,
                    old,
                    new,
                    tuple(r.id for r in new_decision.rules),
                    normalized=normalized,
                )
            )

    def _skip(self, event: dict[str, Any], reason: NotJudged, old: str) -> None:
        self._not_judged[reason] += 1
        if len(self._not_judged_examples) < self._limit * len(NOT_JUDGED_REASONS):
            statement = event.get("statement")
            self._not_judged_examples.append(
                _change(
                    event,
                    statement if isinstance(statement, str) else "",
                    old,
                    "",
                    (),
                    reason=reason,
                )
            )

    def result(
        self,
        *,
        policies: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Sequence[str] = (),
    ) -> ReplayResult:
        return ReplayResult(
            policies=tuple(policies),
            since=iso_z(since) if since else None,
            until=iso_z(until) if until else None,
            statements=self._statements,
            judged=self._judged,
            normalized=self._normalized,
            not_judged={r: self._not_judged[r] for r in NOT_JUDGED_REASONS},
            changes={k: self._changes[k] for k in (*CHANGE_KINDS, "unchanged")},
            transitions={
                f"{o}->{n}": self._transitions[f"{o}->{n}"] for o in ACTIONS for n in ACTIONS
            },
            rules=tuple(
                RuleCount(rule, action, n)
                for (rule, action), n in sorted(self._rules.items(), key=lambda kv: (-kv[1], kv[0]))
            ),
            examples={k: tuple(v) for k, v in self._examples.items()},
            not_judged_examples=tuple(self._not_judged_examples),
            filters=tuple(filters),
        )


def _change(
    event: dict[str, Any],
    statement: str,
    old: str,
    new: str,
    rules: tuple[str, ...],
    *,
    normalized: bool = False,
    reason: str = "",
) -> Change:
    return Change(
        ts=str(event.get("ts") or ""),
        user=str(event.get("user") or ""),
        database=str(event.get("database") or ""),
        session_id=str(event.get("session_id") or ""),
        statement=statement,
        old=old,
        new=new,
        rules=rules,
        normalized=normalized,
        reason=reason,
        identity=str(event.get("identity") or ""),
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _identity_source(event: dict[str, Any]) -> IdentitySource | None:
    try:
        return IdentitySource(event.get("identity_source"))
    except ValueError:
        return None  # recorded before identity_source existed: matches no identity_sources
