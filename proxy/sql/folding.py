"""Does a WHERE (or MERGE join) condition limit the rows of its target? See docs/policies.md.

**Definition.** A condition *limits the rows* when it references a column of the target row
in a way that can be false (or null) for some row. Everything else is *row-independent*: its
value is the same for every target row, so if it can be true it selects every row — whether it
is ``true``, ``now() > '2000-01-01'``, ``(SELECT true)``, ``EXISTS (SELECT 1)``, a parameter, a
condition on another FROM item only, or a volatile call like ``random() < 2``. A row-independent
condition that folds to false or null touches no row and so limits (to nothing).

A condition that mentions the target can still be true for every row. Target columns may be
declared NOT NULL, so a condition true for every row whose columns are not null does not
limit: comparisons of an expression with itself (``id = orders.id``, ``lower(x) >= lower(x)``)
fold to true, ``id IS NOT NULL`` is true, and boolean combinations of comparisons are checked
by enumerating their truth table (``id > 0 OR id <= 0``). That check is sound (it never calls
a condition a tautology unless it is one for non-null columns) but not complete:
data-dependent and function-wrapped tautologies exist without end, which is what a runtime row
limit is for.

**Target columns.** A column reference is the target's when it is qualified by the target's
name (or its alias, when it has one), or unqualified while the statement has no other FROM
item (``UPDATE … FROM``, ``DELETE … USING``, MERGE's source). Inside a subquery, an unqualified
name refers to the subquery's own FROM items when it has any, and a qualifier is the target's
only when no FROM item of the subquery takes that name. So with other FROM items in scope,
target columns must be qualified to count.

Evaluation is abstract: each sub-expression is a concrete constant, ``NULL``, ``LIT`` (some
literal, value not looked at — for the shape cache), ``RI`` (row-independent, value unknown) or
``ROW`` (depends on the target row); a condition's truth is the *set* of outcomes it can have
(``T``, ``F``, ``N``, ``RI``, ``ROW``), so a result that depends on a literal's (or a
parameter's) value shows as a set mixing limiting and non-limiting outcomes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NULL: Final = _Marker("NULL")
LIT: Final = _Marker("LIT")  # a literal whose value is not looked at
RI: Final = _Marker("RI")  # row-independent, value unknown
ROW: Final = _Marker("ROW")  # depends on the target row

# Outcomes of a condition for one row (or for all rows, for RI): true, false, null, unknown but
# the same for every row, depends on the row.
T: Final = "T"
F: Final = "F"
N: Final = "N"
_LIMITING = frozenset({F, N, "ROW"})
_ROW_OUT = "ROW"
_RI_OUT = "RI"
Truth = frozenset[str]

_BOOL_TYPES = frozenset({"bool", "boolean"})
_INT_TYPES = frozenset({"int2", "int4", "int8", "smallint", "integer", "bigint", "int"})
_NUM_TYPES = frozenset({"numeric", "decimal", "float4", "float8", "real"})
_COMPARISONS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
_SELF_TRUE = frozenset({"=", "<=", ">="})
# Negatable row-dependent predicates: (kind, operator) -> (atom kind, negated)
_NEGATABLE: dict[tuple[str, str], tuple[str, bool]] = {
    ("AEXPR_BETWEEN", "BETWEEN"): ("between", False),
    ("AEXPR_NOT_BETWEEN", "NOT BETWEEN"): ("between", True),
    ("AEXPR_BETWEEN_SYM", "BETWEEN SYMMETRIC"): ("between_sym", False),
    ("AEXPR_NOT_BETWEEN_SYM", "NOT BETWEEN SYMMETRIC"): ("between_sym", True),
    ("AEXPR_IN", "="): ("in", False),
    ("AEXPR_IN", "<>"): ("in", True),
    ("AEXPR_LIKE", "~~"): ("like", False),
    ("AEXPR_LIKE", "!~~"): ("like", True),
    ("AEXPR_ILIKE", "~~*"): ("ilike", False),
    ("AEXPR_ILIKE", "!~~*"): ("ilike", True),
    ("AEXPR_SIMILAR", "~"): ("similar", False),
    ("AEXPR_SIMILAR", "!~"): ("similar", True),
    ("AEXPR_OP", "~"): ("regex", False),
    ("AEXPR_OP", "!~"): ("regex", True),
    ("AEXPR_OP", "~*"): ("iregex", False),
    ("AEXPR_OP", "!~*"): ("iregex", True),
}
_MAX_ASSIGNMENTS = 4096
# Node visits the truth table may cost: one client's statement must not stall the analysis.
_MAX_WORK = 200_000
_NULL_CONST = (("A_Const", (("isnull", True),)),)


@dataclass(frozen=True, slots=True)
class Target:
    """How column references name the target row: qualifiers that are the target (its alias if
    it has one, else its name), and whether unqualified names are the target's.

    ``relation``: the target's (schema, name); ``self_aliases``: qualifiers of other FROM items
    that are the target relation again (``DELETE FROM orders USING orders o2``)."""

    qualifiers: frozenset[str]
    unqualified: bool
    relation: tuple[str | None, str] | None = None
    self_aliases: frozenset[str] = frozenset()

    @classmethod
    def of(cls, relation: Any, other_from_items: Any = ()) -> Target:
        """The target ``relation`` (a RangeVar) with the statement's other FROM items (UPDATE's
        FROM, DELETE's USING, MERGE's source): JSON nodes."""
        rv = relation if isinstance(relation, dict) else {}
        alias = (rv.get("alias") or {}).get("aliasname")
        name = alias if alias else rv.get("relname")
        target = (rv.get("schemaname"), str(rv["relname"])) if rv.get("relname") else None
        others = list(other_from_items or ())
        selves = frozenset(
            str(item.get("alias", {}).get("aliasname") or item["relname"])
            for item in _range_vars(others)
            if target is not None and _same_relation(item, target)
        )
        return cls(frozenset({str(name)}) if name else frozenset(), not others, target, selves)

    def paired(self) -> Target:
        """Each target row paired with itself through the self-joined items: their columns are
        the target row's."""
        return Target(self.qualifiers | self.self_aliases, False, self.relation, frozenset())


def _range_vars(items: list[Any]) -> Iterator[dict[str, Any]]:
    """The RangeVars of FROM items, through joins."""
    for item in items:
        if not isinstance(item, dict):
            continue
        rv = item.get("RangeVar", item if "relname" in item else None)
        if isinstance(rv, dict):
            yield rv
        join = item.get("JoinExpr")
        if isinstance(join, dict):
            yield from _range_vars([join.get("larg"), join.get("rarg")])


def _same_relation(rv: dict[str, Any], target: tuple[str | None, str]) -> bool:
    schema = rv.get("schemaname")
    return str(rv.get("relname")) == target[1] and (
        schema is None or target[0] is None or schema == target[0]
    )


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's boolin: case-insensitive prefixes of true/false/yes/no, on/off, 1/0."""
    s = text.strip().lower()
    if not s:
        return None
    if "true".startswith(s) or "yes".startswith(s) or s == "on" or s == "1":
        return True
    if "false".startswith(s) or "no".startswith(s) or s in ("of", "off") or s == "0":
        return False
    return None


@dataclass(frozen=True, slots=True)
class Judgement:
    """``limits``: the condition limits the rows for the values used. ``literal_sensitive``:
    another choice of literal values could change that; ``param_sensitive``: so could the
    values of ``$n`` parameters (judged as unknown row-independent values when unbound)."""

    limits: bool
    literal_sensitive: bool
    param_sensitive: bool


def judge(condition: Any, target: Target, params: Mapping[int, Any] | None = None) -> Judgement:
    """Judge a WHERE/ON condition (JSON node; None = no condition: never limits)."""
    if condition is None:
        return Judgement(False, False, False)
    verdict = _judge_one(condition, target, params)
    if not target.self_aliases:
        return verdict
    # A self-join pairs every target row with itself: if the condition holds for that pairing
    # for every row, it selects every row (DELETE FROM orders USING orders o2 WHERE
    # orders.id = o2.id). Otherwise the other pairings are data: the first judgement stands.
    paired = _judge_one(condition, target.paired(), params)
    return Judgement(
        verdict.limits and paired.limits,
        verdict.literal_sensitive or paired.literal_sensitive,
        verdict.param_sensitive or paired.param_sensitive,
    )


def _judge_one(condition: Any, target: Target, params: Mapping[int, Any] | None) -> Judgement:
    ev = _Evaluator(target, params, False, False)
    limits = _limits(ev, condition)
    literal = _mixed(_Evaluator(target, params, True, False), condition)
    if not literal and _ROW_OUT in ev.truth(condition) and _may_be_tautology(condition):
        # the truth table's atoms are keyed by their literals (id > 0 OR id <= 0 ...)
        literal = _has_literal(condition)
    param = params is None and _mixed(_Evaluator(target, None, False, True), condition)
    return Judgement(limits, literal, param)


def constant_value(node: Any) -> Any:
    """The value of a constant expression (a literal, a cast literal, a folded comparison):
    bool, int, float or str, None for NULL, :data:`RI` when it is not a known constant."""
    value = _Evaluator(Target(frozenset(), False), None, False, False).value(node)
    if value is NULL:
        return None
    return value if isinstance(value, (bool, int, float, str)) else RI


def limits_rows(condition: Any, target: Target, params: Mapping[int, Any] | None = None) -> bool:
    return condition is not None and _limits(_Evaluator(target, params, False, False), condition)


def _limits(ev: _Evaluator, condition: Any) -> bool:
    outcomes = ev.truth(condition)
    if not outcomes <= _LIMITING:
        return False
    if _ROW_OUT in outcomes and _may_be_tautology(condition):
        return not _tautology(ev, condition)
    return True


def _mixed(ev: _Evaluator, condition: Any) -> bool:
    """True when the symbolic outcomes include both limiting and non-limiting ones."""
    outcomes = ev.truth(condition)
    return bool(outcomes & _LIMITING) and bool(outcomes - _LIMITING)


def _may_be_tautology(node: Any) -> bool:
    """Only OR, NOT, IS [NOT] tests and null tests can make row-dependent parts a tautology."""
    if isinstance(node, dict):
        boolexpr = node.get("BoolExpr")
        if isinstance(boolexpr, dict) and boolexpr.get("boolop") in ("OR_EXPR", "NOT_EXPR"):
            return True
        if "BooleanTest" in node or "NullTest" in node:
            return True
        expr = node.get("A_Expr")
        if isinstance(expr, dict) and expr.get("kind") in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
            return True
        return any(_may_be_tautology(v) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_may_be_tautology(v) for v in node)
    return False


# --- target references ---------------------------------------------------------------------


def _field_names(fields: Any) -> list[str] | None:
    out: list[str] = []
    for item in fields or ():
        s = item.get("String") if isinstance(item, dict) else None
        if not isinstance(s, dict):
            return None  # A_Star: t.* — a whole-row reference
        out.append(str(s.get("sval", "")))
    return out


def _from_names(select: dict[str, Any]) -> tuple[set[str], bool]:
    """Names the FROM items of a SELECT take, and whether it has any."""
    names: set[str] = set()
    items = select.get("fromClause") or []

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for kind, body in node.items():
            if not isinstance(body, dict):
                continue
            alias = (body.get("alias") or {}).get("aliasname")
            if kind == "RangeVar":
                names.add(str(alias or body.get("relname", "")))
            elif kind in ("RangeSubselect", "RangeFunction", "RangeTableFunc", "JoinExpr"):
                if alias:
                    names.add(str(alias))
                if kind == "JoinExpr":
                    visit(body.get("larg"))
                    visit(body.get("rarg"))

    for item in items:
        visit(item)
    return names, bool(items)


def _mentions_target(node: Any, target: Target, shadow: frozenset[str], has_from: bool) -> bool:
    if isinstance(node, list):
        return any(_mentions_target(v, target, shadow, has_from) for v in node)
    if not isinstance(node, dict):
        return False
    if len(node) == 1:
        ((kind, body),) = node.items()
        if kind == "ColumnRef" and isinstance(body, dict):
            return _is_target_column(body, target, shadow, has_from)
        if kind == "SelectStmt" and isinstance(body, dict):
            names, has = _from_names(body)
            inner = shadow | names
            return any(
                _mentions_target(v, target, inner, has_from or has)
                for v in body.values()
                if isinstance(v, (dict, list))
            )
        if kind in ("A_Const", "ParamRef"):
            return False
    return any(
        _mentions_target(v, target, shadow, has_from)
        for v in node.values()
        if isinstance(v, (dict, list))
    )


def _is_target_column(
    body: dict[str, Any], target: Target, shadow: frozenset[str], has_from: bool
) -> bool:
    fields = _field_names(body.get("fields"))
    if fields is None:  # t.* or *: the whole row
        raw = body.get("fields") or []
        if len(raw) == 1:
            return target.unqualified and not has_from
        names = _field_names(raw[:-1]) or []
        return bool(names) and names[-1] in target.qualifiers and names[-1] not in shadow
    if len(fields) == 1:
        return target.unqualified and not has_from
    qualifier = fields[-2]
    return qualifier in target.qualifiers and qualifier not in shadow


def _canonical(node: Any, target: Target, mask_literals: bool = False) -> Any:
    """A hashable form of an expression: locations dropped, target columns by name only
    (with ``mask_literals``, every literal's value too)."""
    if isinstance(node, list):
        return tuple(_canonical(v, target, mask_literals) for v in node)
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        column = node.get("ColumnRef")
        if isinstance(column, dict):
            fields = _field_names(column.get("fields"))
            if fields and _is_target_column(column, target, frozenset(), False):
                return ("target-column", fields[-1])
        const = node.get("A_Const")
        if mask_literals and isinstance(const, dict) and _is_literal(const):
            return ("literal",)
    return tuple(
        sorted(
            (k, _canonical(v, target, mask_literals)) for k, v in node.items() if k != "location"
        )
    )


# SELECT clauses that can leave a row out of ``SELECT c FROM target``.
_NARROWING = frozenset(
    {
        "whereClause",
        "groupClause",
        "havingClause",
        "limitCount",
        "limitOffset",
        "distinctClause",
        "larg",
        "rarg",
        "withClause",
        "valuesLists",
    }
)


def _is_literal(const: dict[str, Any]) -> bool:
    """A constant token's value (TRUE/FALSE/NULL are keywords, fixed in the shape key)."""
    return not const.get("isnull") and "boolval" not in const


def _has_literal(node: Any) -> bool:
    if isinstance(node, list):
        return any(_has_literal(v) for v in node)
    if not isinstance(node, dict):
        return False
    const = node.get("A_Const")
    if len(node) == 1 and isinstance(const, dict):
        return _is_literal(const)
    return any(_has_literal(v) for v in node.values() if isinstance(v, (dict, list)))


# --- evaluation ----------------------------------------------------------------------------


Env = Callable[[Any, Any], Truth | None]


class _Evaluator:
    """Abstract evaluation of expressions (see the module docstring)."""

    __slots__ = ("env", "params", "sym_literals", "sym_params", "target")

    def __init__(
        self,
        target: Target,
        params: Mapping[int, Any] | None,
        sym_literals: bool,
        sym_params: bool,
        env: Env | None = None,
    ) -> None:
        self.target = target
        self.params = params
        self.sym_literals = sym_literals
        self.sym_params = sym_params
        self.env = env

    def mentions(self, node: Any) -> bool:
        return _mentions_target(node, self.target, frozenset(), False)

    # value of an expression

    def value(self, node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            return ROW if self.mentions(node) else RI
        ((kind, body),) = node.items()
        if not isinstance(body, dict):
            return RI
        match kind:
            case "A_Const":
                if body.get("isnull"):
                    return NULL
                if self.sym_literals and _is_literal(body):
                    return LIT
                return _const(body)
            case "ParamRef":
                return self._param(int(body.get("number", 0)))
            case "TypeCast":
                return _cast(self.value(body.get("arg")), body.get("typeName"))
            case "ColumnRef":
                return ROW if _is_target_column(body, self.target, frozenset(), False) else RI
            case "BoolExpr" | "A_Expr" | "NullTest" | "BooleanTest":
                return _truth_value(self.truth(node))
            case "CurrentOfExpr":
                return ROW
        return ROW if self.mentions(node) else RI

    def _param(self, number: int) -> Any:
        if self.sym_params:
            return LIT
        if self.params is None or number not in self.params:
            return RI
        value = self.params[number]
        return NULL if value is None else value

    # truth of a condition

    def truth(self, node: Any) -> Truth:
        if self.env is not None:
            found = self.env(node, self)
            if found is not None:
                return found
        if isinstance(node, dict) and len(node) == 1:
            ((kind, body),) = node.items()
            if isinstance(body, dict):
                match kind:
                    case "BoolExpr":
                        return self._bool_expr(body)
                    case "A_Expr":
                        return self._a_expr(body)
                    case "NullTest":
                        return self._null_test(body)
                    case "BooleanTest":
                        return _map(self.truth(body.get("arg")), _BOOLEAN_TESTS[_test(body)])
                    case "SubLink" if self._in_own_column(body):
                        return frozenset({T})
        return _as_truth(self.value(node))

    def _bool_expr(self, body: dict[str, Any]) -> Truth:
        op = body.get("boolop")
        args = [self.truth(a) for a in body.get("args") or ()]
        if op == "NOT_EXPR":
            return _map(args[0], _NOT) if len(args) == 1 else frozenset({_RI_OUT})
        return _fold(op == "OR_EXPR", args)  # AND_EXPR is enum 0: omitted in JSON

    def _null_test(self, body: dict[str, Any]) -> Truth:
        value = self.value(body.get("arg"))
        is_null = body.get("nulltesttype") == "IS_NULL"
        if value is ROW:
            return frozenset({_ROW_OUT})
        if value is RI:
            return frozenset({_RI_OUT})
        if value is LIT:
            return frozenset({T, F})
        return frozenset({T if (value is NULL) == is_null else F})

    def _a_expr(self, body: dict[str, Any]) -> Truth:
        kind = body.get("kind", "AEXPR_OP")
        op = _op_name(body)
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        if kind == "AEXPR_OP" and op in _COMPARISONS:
            same = self._same(lexpr, rexpr)
            if same is True:
                return frozenset({T if op in _SELF_TRUE else F})
            truth = _compare(op, self.value(lexpr), self.value(rexpr))
            return truth | {T if op in _SELF_TRUE else F} if same is LIT else truth
        if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
            same = self._same(lexpr, rexpr)
            truth = frozenset({T}) if same is True else self._not_distinct(lexpr, rexpr)
            if same is LIT:
                truth = truth | {T}
            return _map(truth, _NOT) if kind == "AEXPR_DISTINCT" else truth
        if kind == "AEXPR_IN" and op in ("=", "<>"):
            items = (
                rexpr["List"].get("items") if isinstance(rexpr, dict) and "List" in rexpr else rexpr
            )
            if isinstance(items, list):
                left = self.value(lexpr)
                # x IN (…) is an OR of equalities, x NOT IN (…) an AND of inequalities
                return _fold(op == "=", [_compare(op, left, self.value(i)) for i in items])
        return _as_truth(ROW if self.mentions(body) else RI)

    def _in_own_column(self, sublink: dict[str, Any]) -> bool:
        """``c IN (SELECT c FROM target)``: every row with a non-null c finds itself."""
        target = self.target
        if target.relation is None or sublink.get("subLinkType") != "ANY_SUBLINK":
            return False
        if (_field_names(sublink.get("operName")) or []) not in ([], ["="]):
            return False
        select = (sublink.get("subselect") or {}).get("SelectStmt")
        if not isinstance(select, dict) or any(key in select for key in _NARROWING):
            return False
        items = select.get("fromClause") or []
        targets = select.get("targetList") or []
        if len(items) != 1 or len(targets) != 1:
            return False
        rvs = list(_range_vars(items))
        if (
            len(rvs) != 1
            or "RangeVar" not in items[0]
            or not _same_relation(rvs[0], target.relation)
        ):
            return False
        column = ((targets[0].get("ResTarget") or {}).get("val") or {}).get("ColumnRef")
        fields = _field_names(column.get("fields")) if isinstance(column, dict) else None
        inner = str((rvs[0].get("alias") or {}).get("aliasname") or rvs[0]["relname"])
        if not fields or (len(fields) > 1 and fields[-2] != inner):
            return False
        return bool(_canonical(sublink.get("testexpr"), target) == ("target-column", fields[-1]))

    def _same(self, lexpr: Any, rexpr: Any) -> Any:
        """True: the two sides are one expression. LIT (symbolic literals): they are one
        expression for some literal values only. False otherwise."""
        target = self.target
        if not self.sym_literals:
            return _canonical(lexpr, target) == _canonical(rexpr, target)
        if _canonical(lexpr, target, True) != _canonical(rexpr, target, True):
            return False
        return LIT if _has_literal(lexpr) else True

    def _not_distinct(self, lexpr: Any, rexpr: Any) -> Truth:
        left, right = self.value(lexpr), self.value(rexpr)
        if left is ROW or right is ROW:
            return frozenset({_ROW_OUT})
        if left is RI or right is RI:
            return frozenset({_RI_OUT})
        if left is LIT or right is LIT:
            return frozenset({T, F})
        if left is NULL or right is NULL:
            return frozenset({T if left is right else F})
        same = _compare("=", left, right)
        return same if same <= {T, F} else frozenset({_RI_OUT})


# --- tautologies over row-dependent atoms --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Atom:
    key: Any
    negated: bool
    null_test: bool  # x IS [NOT] NULL on a target column: fixed (columns are taken non-null)


def _atom(node: Any, ev: _Evaluator) -> _Atom | None:
    """The row-dependent predicate ``node`` is, if it is one the truth table can vary."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((kind, body),) = node.items()
    if not isinstance(body, dict) or kind in ("BoolExpr", "BooleanTest"):
        return None
    if not ev.mentions(node) or (kind == "SubLink" and ev._in_own_column(body)):
        return None
    target = ev.target
    if kind == "NullTest":
        negated = body.get("nulltesttype") != "IS_NULL"
        return _null_atom(_canonical(body.get("arg"), target), negated)
    if kind == "A_Expr":
        op = _op_name(body) or ""
        lhs, rhs = _canonical(body.get("lexpr"), target), _canonical(body.get("rexpr"), target)
        akind = body.get("kind", "AEXPR_OP")
        if akind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") and _NULL_CONST in (lhs, rhs):
            # x IS [NOT] DISTINCT FROM NULL is x IS [NOT] NULL
            arg = rhs if lhs == _NULL_CONST else lhs
            return _null_atom(arg, akind == "AEXPR_DISTINCT")
        if akind in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") and lhs == rhs:
            return None  # a comparison with itself: the evaluator folds it
        if akind == "AEXPR_OP" and op in _COMPARISONS:
            base, negated, swap = _normal_comparison(op, lhs, rhs)
            a, b = (rhs, lhs) if swap else (lhs, rhs)
            return _Atom(("cmp", base, a, b), negated, False)
        negatable = _NEGATABLE.get((str(akind), op))
        if negatable is not None:
            return _Atom((negatable[0], lhs, rhs), negatable[1], False)
    return _Atom(("expr", _canonical(node, target)), False, False)


def _null_atom(arg: Any, negated: bool) -> _Atom:
    on_column = isinstance(arg, tuple) and arg[:1] == ("target-column",)
    return _Atom(("null", arg), negated, on_column)


def _normal_comparison(op: str, lhs: Any, rhs: Any) -> tuple[str, bool, bool]:
    """(base operator in =, <, <=; negated; operands swapped) for ``lhs op rhs``."""
    ordered = repr(lhs) <= repr(rhs)
    match op:
        case "=":
            return "=", False, not ordered
        case "<>" | "!=":
            return "=", True, not ordered
        case "<":
            return ("<", False, False) if ordered else ("<=", True, True)
        case "<=":
            return ("<=", False, False) if ordered else ("<", True, True)
        case ">":
            return ("<=", True, False) if ordered else ("<", False, True)
        case _:  # ">="
            return ("<", True, False) if ordered else ("<=", False, True)


def _tautology(ev: _Evaluator, condition: Any) -> bool:
    """True when ``condition`` selects every row whose target columns are not null (or gives a
    row-independent unknown), whatever values its row-dependent atoms take. Columns are taken
    non-null because they may be declared NOT NULL: ``id IS NOT NULL`` and ``id > 0 OR
    id <= 0`` may select every row of the table."""
    found: dict[int, _Atom | None] = {}  # by node identity: the tree is not changed meanwhile
    visits = [0]

    def collect(node: Any, inner: _Evaluator) -> Truth | None:
        visits[0] += 1
        atom = found.get(id(node), _UNSEEN)
        if atom is _UNSEEN:
            atom = found[id(node)] = _atom(node, inner)
        return None if atom is None else frozenset({_ROW_OUT})

    _Evaluator(ev.target, ev.params, False, False, collect).truth(condition)
    atoms = {a.key: a for a in found.values() if a is not None}
    plain = [key for key, a in atoms.items() if not a.null_test]
    if 2 ** len(plain) > _MAX_ASSIGNMENTS or 2 ** len(plain) * visits[0] > _MAX_WORK:
        return False  # too big to enumerate: assume it limits (a runtime row limit's job)
    for values in itertools.product((False, True), repeat=len(plain)):
        assignment = _Assignment(found, dict(zip(plain, values, strict=True)))
        outcomes = _Evaluator(ev.target, ev.params, False, False, assignment).truth(condition)
        if outcomes & _LIMITING:
            return False
    return True


_UNSEEN: Final[Any] = object()


class _Assignment:
    """One row of the truth table: each atom's value (target columns not null)."""

    __slots__ = ("atoms", "value_of")

    def __init__(self, atoms: dict[int, _Atom | None], value_of: dict[Any, bool]) -> None:
        self.atoms = atoms
        self.value_of = value_of

    def __call__(self, node: Any, inner: _Evaluator) -> Truth | None:
        atom = self.atoms.get(id(node))
        if atom is None:
            return None
        if atom.null_test:
            return frozenset({T if atom.negated else F})
        return frozenset({T if self.value_of[atom.key] != atom.negated else F})


# --- three-valued connectives over outcomes --------------------------------------------------

_NOT = {T: F, F: T, N: N, _RI_OUT: _RI_OUT, _ROW_OUT: _ROW_OUT}
_BOOLEAN_TESTS: dict[str, dict[str, str]] = {
    "IS_TRUE": {T: T, F: F, N: F},
    "IS_NOT_TRUE": {T: F, F: T, N: T},
    "IS_FALSE": {T: F, F: T, N: F},
    "IS_NOT_FALSE": {T: T, F: F, N: T},
    "IS_UNKNOWN": {T: F, F: F, N: T},
    "IS_NOT_UNKNOWN": {T: T, F: T, N: F},
}


def _test(body: dict[str, Any]) -> str:
    return str(body.get("booltesttype", "IS_TRUE"))


def _fold(is_or: bool, parts: list[Truth]) -> Truth:
    """Three-valued OR (or AND) of conditions, over every combination of their outcomes."""
    combine = _or if is_or else _and
    result: Truth = frozenset({F if is_or else T})
    for part in parts:
        result = frozenset(combine(a, b) for a in result for b in part)
    return result


def _map(truth: Truth, table: Mapping[str, str]) -> Truth:
    return frozenset(table.get(t, t) for t in truth)


def _or(a: str, b: str) -> str:
    if a == T or b == T:
        return T
    if a == F:
        return b
    if b == F:
        return a
    if _RI_OUT in (a, b):
        return _RI_OUT  # the same unknown for every row: may select them all
    if _ROW_OUT in (a, b):
        return _ROW_OUT
    return N


def _and(a: str, b: str) -> str:
    if a == F or b == F:
        return F
    if a == T:
        return b
    if b == T:
        return a
    if N in (a, b):
        return N  # null or false for every row: touches nothing
    if _ROW_OUT in (a, b):
        return _ROW_OUT
    return _RI_OUT


def _as_truth(value: Any) -> Truth:
    """Outcomes of a value used as a condition."""
    if value is ROW:
        return frozenset({_ROW_OUT})
    if value is RI:
        return frozenset({_RI_OUT})
    if value is NULL:
        return frozenset({N})
    if value is LIT:
        return frozenset({T, F})
    if isinstance(value, frozenset):
        return value
    if isinstance(value, bool):
        return frozenset({T if value else F})
    if isinstance(value, str):  # an untyped literal is coerced to boolean
        parsed = parse_bool(value)
        return frozenset({_RI_OUT}) if parsed is None else frozenset({T if parsed else F})
    return frozenset({_RI_OUT})


def _truth_value(truth: Truth) -> Any:
    """A condition's outcomes as a value for an enclosing expression."""
    if len(truth) == 1:
        (only,) = truth
        if only in (T, F):
            return only == T
        if only == N:
            return NULL
        return ROW if only == _ROW_OUT else RI
    if _ROW_OUT in truth:
        return ROW
    return LIT if truth <= {T, F, N} else RI


# --- constants -----------------------------------------------------------------------------


def _const(body: dict[str, Any]) -> Any:
    if "boolval" in body:
        return bool(body["boolval"].get("boolval", False))
    if "ival" in body:
        return int(body["ival"].get("ival", 0))
    if "fval" in body:
        try:
            return float(body["fval"].get("fval", "0"))
        except ValueError:
            return RI
    if "sval" in body:
        return str(body["sval"].get("sval", ""))
    return RI


def _cast(value: Any, type_name: Any) -> Any:
    if not isinstance(type_name, dict):
        return RI
    if value is RI or value is ROW or value is LIT or value is NULL:
        return value
    names = type_name.get("names") or []
    if not names or type_name.get("arrayBounds"):
        return RI
    target = names[-1].get("String", {}).get("sval", "")
    if target in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        if isinstance(value, str):
            parsed = parse_bool(value)
            return RI if parsed is None else parsed
        return RI
    if target in _INT_TYPES:
        if isinstance(value, bool):
            return RI  # only bool -> int4 exists; keep it simple
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return RI
        return RI
    if target in _NUM_TYPES:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return RI
        return RI
    if target in ("text", "varchar") and isinstance(value, str):
        return value
    return RI


def _op_name(body: dict[str, Any]) -> str | None:
    names = body.get("name") or []
    if not names:
        return None
    last = names[-1].get("String", {}).get("sval")
    return last if isinstance(last, str) else None


def _coerce_pair(left: Any, right: Any) -> tuple[Any, Any] | None:
    """Bring two constants to a comparable form the way an untyped literal would be resolved."""
    if isinstance(left, bool) or isinstance(right, bool):
        if isinstance(left, str):
            left = parse_bool(left)
        if isinstance(right, str):
            right = parse_bool(right)
        if isinstance(left, bool) and isinstance(right, bool):
            return left, right
        return None
    numeric = (int, float)
    if isinstance(left, numeric) and isinstance(right, str):
        right = _to_number(right)
    elif isinstance(right, numeric) and isinstance(left, str):
        left = _to_number(left)
    if isinstance(left, numeric) and isinstance(right, numeric):
        return left, right
    if isinstance(left, str) and isinstance(right, str):
        return left, right
    return None


def _to_number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _compare(op: str | None, left: Any, right: Any) -> Truth:
    if left is ROW or right is ROW:
        return frozenset({_ROW_OUT})
    if left is RI or right is RI:
        return frozenset({_RI_OUT})
    if left is NULL or right is NULL:
        return frozenset({N})
    if left is LIT or right is LIT:
        return frozenset({T, F})
    pair = _coerce_pair(left, right)
    if pair is None:
        return frozenset({_RI_OUT})
    a, b = pair
    if isinstance(a, str) and op not in ("=", "<>", "!="):
        return frozenset({_RI_OUT})  # ordering of strings depends on the collation
    match op:
        case "=":
            result = a == b
        case "<>" | "!=":
            result = a != b
        case "<":
            result = a < b
        case "<=":
            result = a <= b
        case ">":
            result = a > b
        case ">=":
            result = a >= b
        case _:
            return frozenset({_RI_OUT})
    return frozenset({T if result else F})
