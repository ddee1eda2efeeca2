"""The policy engine: a loaded, immutable set of rules and the pure ``evaluate`` on the hot path.

Combining: every rule whose ``when`` holds and whose ``unless`` does not contributes; the
strongest action wins (block > review > flag > allow). A statement no rule matches gets
``defaults.action``. A message with several statements is decided per statement and takes the
strongest outcome, so one blocked statement blocks the whole message.

Speed: rule conditions that depend only on the identity or on the statement's shape (command
tags, classes, missing_where, copy, role_change, opaque, multi_statement) are decided once per
(identity, shape) and the surviving candidate rules are cached; per statement only the name
conditions (tables, functions, access), hours and sql_regex run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.identity import Identity
from proxy.policy.conditions import Clause, Condition, Ctx
from proxy.policy.decision import ACTION_STRENGTH, Action, Decision, Mode, RuleMatch, Severity
from proxy.policy.hours import aware
from proxy.sql.facts import QueryFacts, StatementFacts

SEVERITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
# Whether callers hold `review` statements for approval: the live session does (it waits for
# the approvals broker, see docs/approvals.md). A caller that cannot hold passes holding=False
# and every review is enforced as a block with a message saying so.
HOLDING_WIRED = True
NOT_HELD_SUFFIX = (
    " (this statement needs approval, and this pgwarden cannot hold statements for approval "
    "yet: refused)"
)
DEFAULT_BLOCK_MESSAGE = "statement not allowed by the pgwarden policy (no rule allows it)"
_NO_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # `now` for policies without `hours` rules
# Cache bounds: at most _IDENTITIES x _SHAPES candidate lists (a few MB at worst); the oldest
# entry goes first. A miss costs one prefilter pass over the rules, not a wrong answer.
_IDENTITIES = 256
_SHAPES = 256
_DECISIONS = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    action: Action
    severity: Severity
    when: Clause
    unless: Clause | None
    match: RuleMatch  # what a Decision reports for this rule (carries source "file:line")
    description: str = ""
    index: int = 0  # load order; earlier wins ties

    @property
    def source(self) -> str:
        return self.match.source


@dataclass(frozen=True, slots=True)
class Defaults:
    action: Action = "allow"
    on_unparsable: Action = "block"
    mode: Mode = "enforce"
    search_path: tuple[str, ...] | None = None
    message: str = ""  # client message when defaults.action blocks
    source: str = ""  # "file:line" of the defaults block ("" when built in)
    break_glass: tuple[str, ...] = ()  # groups that may force-approve any review


@dataclass(frozen=True, slots=True)
class ConditionTrace:
    key: str
    holds: bool
    why: str  # the facts that made it hold ("" when it does not)


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule fared on one statement (for ``policy test``)."""

    rule: Rule
    statement: int  # index in QueryFacts.statements
    when: tuple[ConditionTrace, ...]
    unless: tuple[ConditionTrace, ...]

    @property
    def when_holds(self) -> bool:
        return all(c.holds for c in self.when)

    @property
    def exempted(self) -> bool:
        return bool(self.unless) and all(c.holds for c in self.unless)

    @property
    def matched(self) -> bool:
        return self.when_holds and not self.exempted

    @property
    def why(self) -> str:
        reasons = [f"{c.key}: {c.why}" for c in self.when if c.why]
        return "; ".join(reasons) or "the rule has no conditions"


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    facts: QueryFacts
    traces: tuple[RuleTrace, ...]  # rules whose `when` held, per statement, matched or exempted
    defaulted: tuple[int, ...]  # statements no rule matched

    @property
    def matched(self) -> tuple[RuleTrace, ...]:
        return tuple(t for t in self.traces if t.matched)


@dataclass(frozen=True, slots=True)
class _Candidate:
    rule: Rule
    when_rest: tuple[Condition, ...]
    unless_rest: tuple[Condition, ...] | None  # None: the unless clause cannot hold here


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    defaults: Defaults
    files: tuple[Path, ...]  # every policy file read, includes too
    watch_paths: tuple[Path, ...] = ()  # files plus included directories (new files appear there)
    uses_time: bool = False
    # False: a `review` decision is enforced as `block` (the safe answer while the session
    # cannot hold a statement); True: it is `review`, and the caller must hold the statement.
    holding: bool = False
    groups: tuple[tuple[str, frozenset[str]], ...] = ()  # top-level `groups:` of the files
    _candidates: dict[tuple[Any, ...], dict[tuple[Any, ...], tuple[_Candidate, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _decisions: dict[tuple[Any, ...], Decision] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    # --- the hot path ----------------------------------------------------------------------

    def evaluate(
        self, identity: Identity, facts: QueryFacts, now: datetime | None = None
    ) -> Decision:
        if not facts.parsable:
            return self._unparsable(facts)
        if not facts.statements:
            return Decision(action="allow", mode=self.defaults.mode, reason="empty query")
        when = aware(now) if self.uses_time else _NO_TIME
        key = (
            identity.user,
            identity.database,
            identity.application_name,
            identity.client_addr,
            identity.end_identity,
            identity.identity_source,
        )
        per_identity = self._candidates.get(key)
        if per_identity is None:
            if len(self._candidates) >= _IDENTITIES:
                del self._candidates[next(iter(self._candidates))]
            per_identity = self._candidates[key] = {}
        matches: list[Rule] = []
        defaulted = False
        for stmt in facts.statements:
            shape = (
                stmt.command,
                stmt.effective_commands,
                stmt.classes,
                stmt.copy,
                stmt.missing_where,
                stmt.role_change,
                stmt.opaque,
                len(facts.statements) > 1,  # facts.multi_statement (a property call)
            )
            candidates = per_identity.get(shape)
            if candidates is None:
                if len(per_identity) >= _SHAPES:
                    del per_identity[next(iter(per_identity))]
                candidates = per_identity[shape] = self._prefilter(identity, stmt, facts)
            matched_any = False
            if not candidates:
                defaulted = True
                continue
            ctx = Ctx(identity, stmt, facts, when)
            for cand in candidates:
                if _all_hold(cand.when_rest, ctx) and not (
                    cand.unless_rest is not None and _all_hold(cand.unless_rest, ctx)
                ):
                    matches.append(cand.rule)
                    matched_any = True
            if not matched_any:
                defaulted = True
        return self._decide(matches, defaulted)

    def _prefilter(
        self, identity: Identity, stmt: StatementFacts, facts: QueryFacts
    ) -> tuple[_Candidate, ...]:
        """Rules still possible for this identity and command set, with what remains to check."""
        ctx = Ctx(identity, stmt, facts, _NO_TIME)
        out = []
        for rule in self.rules:
            if not _all_hold(rule.when.prefilter, ctx):
                continue
            unless_rest: tuple[Condition, ...] | None = None
            if rule.unless is not None and _all_hold(rule.unless.prefilter, ctx):
                unless_rest = rule.unless.rest
                if not unless_rest:
                    continue  # exempted for every statement of this kind
            out.append(_Candidate(rule, rule.when.rest, unless_rest))
        return tuple(out)

    # --- explaining (policy test) ------------------------------------------------------------

    def explain(
        self, identity: Identity, facts: QueryFacts, now: datetime | None = None
    ) -> Explanation:
        """Evaluate without shortcuts, recording every condition of every rule whose ``when``
        held; the decision is the one :meth:`evaluate` returns."""
        if not facts.parsable or not facts.statements:
            return Explanation(self.evaluate(identity, facts, now), facts, (), ())
        when = aware(now) if self.uses_time else _NO_TIME
        traces: list[RuleTrace] = []
        matches: list[Rule] = []
        defaulted: list[int] = []
        for index, stmt in enumerate(facts.statements):
            ctx = Ctx(identity, stmt, facts, when)
            matched_any = False
            for rule in self.rules:
                when_trace = _trace(rule.when, ctx)
                if not all(c.holds for c in when_trace):
                    continue
                unless_trace = _trace(rule.unless, ctx) if rule.unless is not None else ()
                trace = RuleTrace(rule, index, when_trace, unless_trace)
                traces.append(trace)
                if trace.matched:
                    matches.append(rule)
                    matched_any = True
            if not matched_any:
                defaulted.append(index)
        decision = self._decide(matches, bool(defaulted))
        return Explanation(decision, facts, tuple(traces), tuple(defaulted))

    # --- combining ---------------------------------------------------------------------------

    def _decide(self, matches: list[Rule], defaulted: bool) -> Decision:
        # Decisions are values: the same matched rules always give the same one.
        key = (defaulted, *[r.index for r in matches])
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= _DECISIONS:
                del self._decisions[next(iter(self._decisions))]
            decision = self._decisions[key] = self._combine(matches, defaulted)
        return decision

    def _combine(self, matches: list[Rule], defaulted: bool) -> Decision:
        defaults = self.defaults
        seen: set[str] = set()
        rules: list[RuleMatch] = []
        deciding: Rule | None = None
        for rule in matches:
            if rule.id in seen:
                continue
            seen.add(rule.id)
            rules.append(rule.match)
            if deciding is None or _outranks(rule, deciding):
                deciding = rule
        intended: Action = deciding.action if deciding is not None else "allow"
        default_match: RuleMatch | None = None
        if defaulted:
            if defaults.action != "allow":
                default_match = RuleMatch(
                    "default",
                    defaults.action,
                    "medium",
                    defaults.source or "defaults",
                    defaults.message or DEFAULT_BLOCK_MESSAGE,
                )
                rules.append(default_match)
            if ACTION_STRENGTH[defaults.action] > ACTION_STRENGTH[intended]:
                intended = defaults.action
        if deciding is not None and deciding.action == intended:
            chosen: RuleMatch | None = deciding.match
        else:
            chosen = default_match
        if not rules:
            reason = "no rule matched: defaults.action is allow"
        elif deciding is None:
            reason = f"no rule matched: defaults.action is {defaults.action}"
        else:
            reason = "matched " + ", ".join(f"{r.id} ({r.action})" for r in rules)
        return self._finish(intended, tuple(rules), chosen, reason)

    def _finish(
        self, intended: Action, rules: tuple[RuleMatch, ...], chosen: RuleMatch | None, reason: str
    ) -> Decision:
        mode = self.defaults.mode
        action: Action = intended
        suffix = ""
        if mode == "monitor" and intended in ("block", "review"):
            action = "flag"
            reason = f"monitor mode, would {intended}: {reason}"
        elif intended == "review" and not self.holding:
            action = "block"
            reason = f"{reason}; enforced as block: this proxy cannot hold statements yet"
            suffix = NOT_HELD_SUFFIX
        # Monitor mode holds nothing, so its would-be review carries no request to make.
        review = chosen.review if action != "flag" and chosen is not None else None
        notify = (
            action == "flag"
            and mode == "enforce"
            and any(r.notify and r.action == "flag" for r in rules)
        )
        if notify and chosen is not None and not chosen.notify:
            chosen = next(r for r in rules if r.notify and r.action == "flag")
        message = (chosen.message if chosen is not None else "") + suffix
        guard = None
        if action in ("allow", "flag"):
            limits = [r.max_rows for r in rules if r.max_rows is not None]
            if limits:
                guard = min(limits, key=lambda g: g.limit)
        return Decision(
            action=action,
            rules=rules,
            mode=mode,
            intended=intended,
            reason=reason,
            message=message,
            sqlstate=chosen.sqlstate if chosen is not None else "42501",
            notify=notify,
            review=review,
            guard=guard,
        )

    def _unparsable(self, facts: QueryFacts) -> Decision:
        defaults = self.defaults
        why = facts.unparsable_reason or facts.parse_error or "unknown reason"
        action = defaults.on_unparsable
        match = RuleMatch(
            "unparsable",
            action,
            "high",
            defaults.source or "defaults",
            f"pgwarden cannot analyse this statement ({why}); the policy refuses what it "
            "cannot understand",
            # A plain syntax error keeps its class so drivers report it as one.
            "42601" if facts.unparsable_reason is None else "42501",
        )
        return self._finish(action, (match,), match, f"unparsable: {why}")


def _outranks(a: Rule, b: Rule) -> bool:
    ka = (ACTION_STRENGTH[a.action], SEVERITY_RANK[a.severity], -a.index)
    kb = (ACTION_STRENGTH[b.action], SEVERITY_RANK[b.severity], -b.index)
    return ka > kb


def _all_hold(conditions: tuple[Condition, ...], ctx: Ctx) -> bool:
    # A plain loop: all() over a generator costs a frame per call on the hot path.
    for condition in conditions:  # noqa: SIM110
        if not condition.holds(ctx):
            return False
    return True


def _trace(clause: Clause | None, ctx: Ctx) -> tuple[ConditionTrace, ...]:
    if clause is None:
        return ()
    out = []
    for c in clause.conditions:
        holds = c.holds(ctx)
        out.append(ConditionTrace(c.key, holds, c.why(ctx) if holds else ""))
    return tuple(out)
