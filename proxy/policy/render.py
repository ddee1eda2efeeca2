"""Show policy decisions to people (``policy test``) and to programs (``--json``)."""

from __future__ import annotations

from typing import Any

from proxy.policy.cases import CaseResult
from proxy.policy.engine import Explanation, RuleTrace
from proxy.sql.facts import QueryFacts, StatementFacts


def statement_json(stmt: StatementFacts) -> dict[str, Any]:
    return {
        "text": stmt.text,
        "command": stmt.command,
        "class": stmt.statement_class,
        "effective_commands": sorted(stmt.effective_commands),
        "classes": sorted(stmt.classes),
        "relations": [
            {"schema": r.schema, "name": r.name, "access": r.access} for r in stmt.relations
        ],
        "functions": sorted(stmt.functions),
        "missing_where": stmt.missing_where,
        "copy": stmt.copy,
        "role_change": stmt.role_change,
        "opaque": stmt.opaque,
        "fingerprint": stmt.fingerprint,
        "notes": list(stmt.notes),
    }


def facts_json(facts: QueryFacts) -> dict[str, Any]:
    return {
        "parsable": facts.parsable,
        "parse_error": facts.parse_error,
        "unparsable_reason": facts.unparsable_reason,
        "multi_statement": facts.multi_statement,
        "statements": [statement_json(s) for s in facts.statements],
    }


def _rule_json(trace: RuleTrace) -> dict[str, Any]:
    rule = trace.rule
    return {
        "id": rule.id,
        "action": rule.action,
        "severity": rule.severity,
        "source": rule.source,
        "statement": trace.statement + 1,
        "why": trace.why,
    }


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    decision = explanation.decision
    rules = [_rule_json(t) for t in explanation.matched]
    # Pseudo-rules (unparsable, default) have no trace; report them with the engine's reason.
    traced = {r["id"] for r in rules}
    for match in decision.rules:
        if match.id not in traced:
            rules.append(
                {
                    "id": match.id,
                    "action": match.action,
                    "severity": match.severity,
                    "source": match.source,
                    "statement": None,
                    "why": decision.reason,
                }
            )
    return {
        "action": decision.action,
        "intended": decision.intended,
        "mode": decision.mode,
        "reason": decision.reason,
        "message": decision.message,
        "sqlstate": decision.sqlstate if decision.intended != "allow" else None,
        "review": decision.review.as_json() if decision.review is not None else None,
        "rules": rules,
        "exempted": [
            {"id": t.rule.id, "source": t.rule.source, "statement": t.statement + 1}
            for t in explanation.traces
            if t.when_holds and t.exempted
        ],
        "facts": facts_json(explanation.facts),
    }


def pretty_sql(text: str) -> str:
    """SQL laid out for reading; sqlparse is used for display only, never for decisions."""
    import sqlparse
    from sqlparse.exceptions import SQLParseError

    try:
        formatted = sqlparse.format(text.strip(), reindent=True, keyword_case="upper")
    except SQLParseError:
        # sqlparse refuses very large statements (a DoS guard); show them as written.
        return text.strip()
    return str(formatted).strip() or text.strip()


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _statement_lines(index: int, stmt: StatementFacts) -> list[str]:
    lines = [f"statement {index + 1}:"]
    lines += ["    " + line for line in pretty_sql(stmt.text).splitlines()]
    hidden = sorted(stmt.effective_commands - {stmt.command})
    command = stmt.command + (f" (also runs: {', '.join(hidden)})" if hidden else "")
    lines.append(f"  command        {command}")
    lines.append(f"  classes        {', '.join(sorted(stmt.classes)) or '-'}")
    tables = ", ".join(f"{r.qualified} ({r.access})" for r in stmt.relations)
    lines.append(f"  tables         {tables or '-'}")
    lines.append(f"  functions      {', '.join(sorted(stmt.functions)) or '-'}")
    flags = [
        f"missing_where={_yes(stmt.missing_where)}",
        f"copy={stmt.copy or '-'}",
        f"role_change={_yes(stmt.role_change)}",
        f"opaque={_yes(stmt.opaque)}",
    ]
    lines.append(f"  facts          {'  '.join(flags)}")
    lines += [f"  note           {note}" for note in stmt.notes]
    return lines


def explanation_text(explanation: Explanation) -> str:
    decision = explanation.decision
    facts = explanation.facts
    head = decision.action.upper()
    if decision.action != decision.intended and decision.mode == "monitor":
        head += f" (monitor mode; enforce would {decision.intended})"
    elif decision.action != decision.intended:
        head += f" (the policy asks for {decision.intended}; this proxy cannot hold statements yet)"
    lines = [f"decision: {head}", f"reason:   {decision.reason}"]
    if decision.review is not None:
        lines.append(f"review:   {decision.review.describe()}")
    if (decision.intended in ("block", "review") or decision.notify) and decision.message:
        lines.append(f"message:  {decision.message}  [SQLSTATE {decision.sqlstate}]")
    lines.append("")
    if not facts.parsable:
        lines.append("the statement could not be analysed:")
        lines.append(f"  {facts.unparsable_reason or facts.parse_error}")
        lines += ["    " + line for line in pretty_sql(facts.text).splitlines()]
    for index, stmt in enumerate(facts.statements):
        lines += _statement_lines(index, stmt)
        lines.append("")
    matched = explanation.matched
    if matched:
        lines.append("matched rules:")
        for t in matched:
            where = f" (statement {t.statement + 1})" if facts.multi_statement else ""
            lines.append(f"  {t.rule.action:<6} {t.rule.id}  [{t.rule.severity}]  {t.rule.source}")
            lines.append(f"         why{where}: {t.why}")
    pseudo = [m for m in decision.rules if m.id in ("default", "unparsable")]
    for m in pseudo:
        lines.append(f"  {m.action:<6} {m.id}  [{m.severity}]  {m.source}")
    if not matched and not pseudo:
        lines.append("matched rules: none (defaults.action allow)")
    exempted = [t for t in explanation.traces if t.when_holds and t.exempted]
    if exempted:
        lines.append("exempted by unless:")
        for t in exempted:
            unless = "; ".join(f"{c.key}: {c.why}" for c in t.unless)
            lines.append(f"  {t.rule.id}  {t.rule.source}  ({unless})")
    return "\n".join(lines).rstrip() + "\n"


def case_line(result: CaseResult) -> str:
    case = result.case
    status = "PASS" if result.ok else "FAIL"
    rules = ", ".join(result.rule_ids) or "-"
    line = f"{status}  {case.id}: expected {case.expect}, got {result.action}  rules: {rules}"
    if not result.ok:
        line += f"\n      {case.source}: {'; '.join(result.failures)}"
    return line


def case_json(result: CaseResult) -> dict[str, Any]:
    return {
        "id": result.case.id,
        "source": result.case.source,
        "action": result.action,
        "expected": result.case.expect,
        "ok": result.ok,
        "rules": list(result.rule_ids),
        "failures": list(result.failures),
    }
