"""The replay result as text for a terminal (JSON is :meth:`ReplayResult.as_dict`)."""

from __future__ import annotations

from proxy.review.render_text import render_table
from proxy.review.replay import CHANGE_KINDS, NORMALIZED_NOTE, NOT_JUDGED_REASONS, ReplayResult
from proxy.review.tables import Column, Table, fmt_int, fmt_ts

_TITLES = {
    "newly_blocked": "Newly blocked",
    "newly_flagged": "Newly flagged",
    "no_longer_blocked": "No longer blocked",
    "no_longer_flagged": "No longer flagged",
    "unchanged": "Unchanged",
}


def render_replay_text(result: ReplayResult) -> str:
    lines = ["pgwarden policy replay", f"  policy     {', '.join(result.policies) or '-'}"]
    since = fmt_ts(result.since) if result.since else "beginning of the trail"
    until = fmt_ts(result.until) if result.until else "now"
    lines.append(f"  window     {since} → {until} UTC")
    if result.filters:
        lines.append(f"  filters    {' '.join(result.filters)}")
    lines += ["", "Summary"]
    not_judged = sum(result.not_judged.values())
    items = [
        ("statements", result.statements),
        ("judged", result.judged),
        *((_TITLES[k].lower(), result.changes[k]) for k in (*CHANGE_KINDS, "unchanged")),
        ("not judged", not_judged),
    ]
    width = max(len(label) for label, _ in items)
    lines.extend(f"  {label.ljust(width)}  {fmt_int(n):>10}" for label, n in items)
    for reason, text in NOT_JUDGED_REASONS.items():
        if result.not_judged.get(reason):
            lines.append(f"    {fmt_int(result.not_judged[reason])} {text}")
    if result.normalized:
        lines.append(
            f"  {fmt_int(result.normalized)} judged statement(s) were recorded normalized "
            f"({NORMALIZED_NOTE})"
        )
    lines += ["", "Old → new (recorded action → new policy's action)"]
    for pair, n in result.transitions.items():
        if n:
            old, new = pair.split("->")
            lines.append(f"  {old:>5} → {new:<5}  {fmt_int(n):>10}")
    lines.append("")
    lines.extend(
        render_table(
            Table(
                key="rules",
                title="Rules of the new policy that matched",
                columns=(Column("rule"), Column("action"), Column("statements", "num")),
                rows=tuple((r.rule, r.action, fmt_int(r.count)) for r in result.rules),
            )
        )
    )
    for kind in CHANGE_KINDS:
        examples = result.examples.get(kind, ())
        if not result.changes.get(kind):
            continue
        lines.append("")
        lines.extend(
            render_table(
                Table(
                    key=kind,
                    title=f"{_TITLES[kind]}: {fmt_int(result.changes[kind])} "
                    f"(showing {len(examples)})",
                    columns=(
                        Column("time"),
                        Column("user"),
                        Column("old → new"),
                        Column("rules"),
                        Column("statement", "code"),
                    ),
                    rows=tuple(
                        (
                            fmt_ts(c.ts),
                            c.user,
                            f"{c.old} → {c.new}",
                            ", ".join(c.rules) or "-",
                            ("[normalized] " if c.normalized else "") + c.statement,
                        )
                        for c in examples
                    ),
                )
            )
        )
    if result.not_judged_examples:
        lines.append("")
        lines.extend(
            render_table(
                Table(
                    key="not-judged",
                    title=f"Not judged: {fmt_int(not_judged)} (examples)",
                    columns=(
                        Column("time"),
                        Column("user"),
                        Column("recorded"),
                        Column("why"),
                        Column("statement", "code"),
                    ),
                    rows=tuple(
                        (
                            fmt_ts(c.ts),
                            c.user,
                            c.old,
                            c.reason,
                            c.statement or "(none)",
                        )
                        for c in result.not_judged_examples
                    ),
                )
            )
        )
    return "\n".join(lines) + "\n"
