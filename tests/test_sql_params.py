"""Bind parameters and EXECUTE arguments as facts (proxy/sql/params.py), and the soundness of
the "limits the rows" tautology check (proxy/sql/folding.py) against SQL's own semantics."""

from __future__ import annotations

import operator
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sql import params
from proxy.sql.extract import analyze, prepared_body, resolve_execute
from proxy.sql.facts import ParserSettings

WHERE_PARAM = analyze("DELETE FROM orders WHERE $1")


def test_unbound_parameter_is_judged_strictly_and_marked() -> None:
    assert WHERE_PARAM.param_sensitive
    assert WHERE_PARAM.statements[0].missing_where
    assert not analyze("DELETE FROM orders WHERE id = $1").param_sensitive


@pytest.mark.parametrize(
    ("value", "fmt", "oid", "unbounded"),
    [
        (b"t", 0, 16, True),
        (b"true", 0, 0, True),  # unspecified type: read like an untyped literal
        (b"f", 0, 16, False),
        (b"off", 0, 0, False),
        (b"\x01", 1, 16, True),
        (b"\x00", 1, 16, False),
        (None, 0, 16, False),  # NULL selects nothing
        (b"\x01", 1, 0, True),  # binary of an unspecified type: unknown, strict
        (b"maybe", 0, 16, True),  # the server rejects it; strict meanwhile
    ],
)
def test_bind_message_judges_with_the_bound_value(
    value: bytes | None, fmt: int, oid: int, unbounded: bool
) -> None:
    bound = params.bind_message(WHERE_PARAM, [value], [fmt], [oid])
    assert bound.statements[0].missing_where is unbounded


def test_decode_values_per_type_and_format() -> None:
    values = [b"42", struct.pack(">q", -7), struct.pack(">d", 1.5), "é".encode("latin-1"), None]
    decoded = params.decode_values(values, [0, 1, 1, 0, 0], [23, 20, 701, 25, 16], "LATIN1")
    assert decoded == {1: 42, 2: -7, 3: 1.5, 4: "é", 5: None}
    assert params.decode_values([b"x", b"y"], [0, 1, 0], [25, 25]) == {
        1: params.UNKNOWN,
        2: params.UNKNOWN,
    }  # three formats for two values: the server refuses the Bind
    assert params.decode_values([b"\xff"], [], [25]) == {1: params.UNKNOWN}  # not UTF-8


def test_parameters_in_or_and_regclass_and_set_config() -> None:
    facts = analyze("UPDATE orders SET status = 'x' WHERE id = 1 OR $1")
    assert facts.statements[0].missing_where
    assert not params.bind(facts, {1: False}).statements[0].missing_where
    assert params.bind(facts, {1: True}).statements[0].missing_where
    calls = analyze("SELECT nextval($1), set_config($2, $3, false)")
    assert calls.statements[0].role_change and calls.statements[0].relations == ()
    safe = params.bind(calls, {1: "s.seq1", 2: "application_name", 3: "x"}).statements[0]
    assert not safe.role_change
    assert [(r.qualified, r.access) for r in safe.relations] == [("s.seq1", "write")]
    assert params.bind(calls, {1: "q", 2: "ROLE", 3: "x"}).statements[0].role_change
    assert params.bind(calls, {2: params.UNKNOWN}).statements[0].role_change


def test_bind_returns_the_same_facts_when_nothing_depends_on_parameters() -> None:
    facts = analyze("SELECT * FROM orders WHERE id = $1")
    assert params.bind_message(facts, [b"1"], [], [23]) is facts


@pytest.mark.parametrize(
    ("execute", "unbounded"),
    [
        ("EXECUTE p(true)", True),
        ("EXECUTE p('yes')", True),
        ("EXECUTE p(false)", False),
        ("EXECUTE p(NULL)", False),
        ("EXECUTE p(1 = 1)", True),
        ("EXECUTE p(random() < 2)", True),  # not a constant: strict
    ],
)
def test_execute_arguments_bind_a_sql_prepared_statement(execute: str, unbounded: bool) -> None:
    body = prepared_body(analyze("PREPARE p(bool) AS DELETE FROM orders WHERE $1").statements[0])
    assert body is not None and body.missing_where and body.param_sensitive
    stmt = resolve_execute(analyze(execute).statements[0], {"p": body})
    assert stmt.missing_where is unbounded
    assert "DELETE" in stmt.effective_commands


def test_param_sensitive_facts_stay_out_of_the_shape_level() -> None:
    from proxy.sql.cache import FactsCache

    cache = FactsCache()
    cache.analyze("DELETE FROM orders WHERE $1 AND 1 = 1")
    assert cache.shapes == 0
    facts = cache.analyze("DELETE FROM orders WHERE $1 AND 2 = 2")
    assert facts.param_sensitive and cache.shape_hits == 0
    assert params.bind(facts, {1: False}, ParserSettings()).statements[0].missing_where is False


# --- soundness of the tautology check ---------------------------------------------------------

_VALUES: list[int | None] = [-2, -1, 0, 1, 2, 3]  # columns may be NOT NULL: non-null rows
_OPS = ["=", "<>", "<", "<=", ">", ">="]
_PY_OPS: dict[str, Any] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@st.composite
def conditions(draw: st.DrawFn, depth: int = 3) -> tuple[str, Any]:
    """(SQL text over column id, Python evaluator id -> True/False/None)."""
    kind = draw(st.sampled_from(["cmp", "null", "not", "and", "or"] if depth else ["cmp", "null"]))
    if kind == "cmp":
        op, c = draw(st.sampled_from(_OPS)), draw(st.integers(-1, 2))
        py = _PY_OPS[op]
        if draw(st.booleans()):
            return f"id {op} {c}", lambda x: None if x is None else py(x, c)
        return f"{c} {op} id", lambda x: None if x is None else py(c, x)
    if kind == "null":
        negated = draw(st.booleans())
        text = "id IS NOT NULL" if negated else "id IS NULL"
        return text, lambda x: (x is not None) if negated else (x is None)
    if kind == "not":
        text, inner = draw(conditions(depth - 1))
        return f"NOT ({text})", lambda x: None if inner(x) is None else not inner(x)
    (lt, lf), (rt, rf) = draw(conditions(depth - 1)), draw(conditions(depth - 1))

    def combine(x: Any) -> bool | None:
        a, b = lf(x), rf(x)
        if kind == "and":
            return False if False in (a, b) else (None if None in (a, b) else True)
        return True if True in (a, b) else (None if None in (a, b) else False)

    return f"({lt}) {kind.upper()} ({rt})", combine


@settings(max_examples=400, deadline=None)
@given(conditions())
def test_a_condition_judged_not_limiting_selects_every_row(cond: tuple[str, Any]) -> None:
    text, evaluate = cond
    stmt = analyze(f"DELETE FROM orders WHERE {text}").statements[0]
    if stmt.missing_where:
        assert all(evaluate(x) is True for x in _VALUES), text


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "DELETE FROM t WHERE $1",
        "SELECT 1; DELETE FROM t WHERE $1",
        "PREPARE p AS DELETE FROM t WHERE $1",
        "PREPARE p AS SELECT $1",
        "SELECT set_config($1, 'x', false)",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ],
)
def test_the_relays_compiled_param_sensitive_agrees_with_the_facts(sql: str) -> None:
    # proxy.relay.core asks this of every Bind's candidates without the (interpreted) property
    from proxy.relay.core import _param_sensitive

    facts = analyze(sql)
    assert _param_sensitive(facts) == facts.param_sensitive
