"""``max_rows: N`` in a policy file: what it compiles to, and every misuse reported at its
file:line:col."""

from __future__ import annotations

from pathlib import Path

from proxy.identity import Identity
from proxy.policy.decision import RowLimit
from proxy.policy.loader import load_policy
from proxy.sql.extract import analyze
from tests.test_policy_loader import problems, write


def _rules(body: str) -> str:
    return "version: 1\ndefaults: {action: allow}\nrules:\n" + body


def test_max_rows_compiles_to_the_strictest_limit(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        _rules(
            "  - id: ten\n"
            "    when: {commands: [UPDATE, DELETE]}\n"
            "    action: allow\n"
            "    max_rows: 10\n"
            "  - id: two\n"
            "    when: {commands: [delete], tables: [orders]}\n"
            "    action: flag\n"
            "    max_rows: 2\n"
            "    message: Two orders at most.\n"
        ),
    )
    policy = load_policy([f])
    who = Identity(user="u", database="d")
    update = policy.evaluate(who, analyze("update t set q = 1 where id > 0"))
    delete = policy.evaluate(who, analyze("delete from orders where id > 0"))
    select = policy.evaluate(who, analyze("select 1"))
    assert update.guard == RowLimit(
        10, "ten", "statement changes more rows than pgwarden policy rule ten allows"
    )
    assert delete.guard == RowLimit(2, "two", "Two orders at most.")
    assert delete.as_audit()["max_rows"] == 2
    assert select.guard is None


def test_a_blocked_statement_carries_no_guard(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        _rules(
            "  - id: few\n    when: {commands: [DELETE]}\n    action: allow\n    max_rows: 5\n"
            "  - id: none\n    when: {commands: [DELETE], missing_where: true}\n"
            "    action: block\n"
        ),
    )
    decision = load_policy([f]).evaluate(Identity(user="u", database="d"), analyze("delete from t"))
    assert decision.action == "block" and decision.guard is None


def test_misused_max_rows_is_an_error_at_the_key(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        _rules(
            "  - id: select-only\n    when: {commands: [SELECT]}\n    action: allow\n"
            "    max_rows: 5\n"
            "  - id: zero\n    when: {commands: [UPDATE]}\n    action: allow\n    max_rows: 0\n"
            "  - id: text\n    when: {commands: [UPDATE]}\n    action: allow\n"
            "    max_rows: many\n"
            "  - id: blocked\n    when: {commands: [UPDATE]}\n    action: block\n"
            "    max_rows: 5\n"
            "  - id: anything\n    when: {users: [bob]}\n    action: allow\n    max_rows: 5\n"
            "  - id: boolean\n    when: {commands: [DELETE]}\n    action: allow\n"
            "    max_rows: true\n"
        ),
    )
    assert problems(f) == [
        f"{f}:7:5: rules[select-only].max_rows: max_rows guards only UPDATE, DELETE, MERGE, "
        "INSERT: their command tag counts the rows changed; not SELECT",
        f"{f}:11:5: rules[zero].max_rows: max_rows must be a positive whole number of rows",
        f"{f}:15:5: rules[text].max_rows: max_rows must be a positive whole number of rows",
        f"{f}:19:5: rules[blocked].max_rows: max_rows applies to rules that let the statement "
        "run (allow or flag), not block",
        f"{f}:23:5: rules[anything].max_rows: max_rows needs when.commands listing the guarded "
        "commands (UPDATE, DELETE, MERGE, INSERT)",
        f"{f}:27:5: rules[boolean].max_rows: max_rows must be a positive whole number of rows",
    ]
