"""Constant folding of WHERE clauses, just enough to spot trivially true conditions.

Works on libpg_query's JSON parse tree. Three-valued logic as in SQL; anything that depends on
data, parameters, collations or functions is UNKNOWN, so a real condition is never folded away.
"""

from __future__ import annotations

from typing import Any, Final


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NULL: Final = _Marker("NULL")
UNKNOWN: Final = _Marker("UNKNOWN")
# "Some literal, value not looked at": the symbolic evaluation of depends_on_literals() gives
# every constant this value, so a result other than LITERAL holds for all literal values.
LITERAL: Final = _Marker("LITERAL")

_BOOL_TYPES = frozenset({"bool", "boolean"})
_INT_TYPES = frozenset({"int2", "int4", "int8", "smallint", "integer", "bigint", "int"})
_NUM_TYPES = frozenset({"numeric", "decimal", "float4", "float8", "real"})
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "char", "name"})
_COMPARISONS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})


def is_trivially_true(where: Any) -> bool:
    """True when the WHERE clause (JSON node, or None for no WHERE) selects every row."""
    if where is None:
        return True
    return _truth(where, False) is True


def depends_on_literals(where: Any) -> bool:
    """True when some choice of the literals' values could change :func:`is_trivially_true`.

    Evaluates with every constant replaced by LITERAL. Each rule yields a value other than
    LITERAL only when that value is forced whatever the literals are (UNKNOWN absorbs a
    comparison, a TRUE absorbs OR, a FALSE absorbs AND...), so a non-LITERAL result is the
    same for every text that differs only in its literals.
    """
    return where is not None and _truth(where, True) is LITERAL


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


def _truth(node: Any, sym: bool) -> Any:
    """Value of a node in boolean context: True, False, NULL or UNKNOWN (or LITERAL)."""
    value = _value(node, sym)
    if value is True or value is False or value is NULL or value is LITERAL:
        return value
    if isinstance(value, str):  # an untyped literal is coerced to boolean
        parsed = parse_bool(value)
        return UNKNOWN if parsed is None else parsed
    return UNKNOWN


def _value(node: Any, sym: bool) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        return UNKNOWN
    ((kind, body),) = node.items()
    if not isinstance(body, dict):
        return UNKNOWN
    match kind:
        case "A_Const":
            return LITERAL if sym else _const(body)
        case "TypeCast":
            return _cast(_value(body.get("arg"), sym), body.get("typeName"))
        case "BoolExpr":
            return _bool_expr(body, sym)
        case "A_Expr":
            return _a_expr(body, sym)
        case "NullTest":
            arg = _value(body.get("arg"), sym)
            if arg is UNKNOWN or arg is LITERAL:
                return arg
            is_null = arg is NULL
            return is_null if body.get("nulltesttype") == "IS_NULL" else not is_null
        case "BooleanTest":
            return _boolean_test(body, sym)
    return UNKNOWN


def _const(body: dict[str, Any]) -> Any:
    if body.get("isnull"):
        return NULL
    if "boolval" in body:
        return bool(body["boolval"].get("boolval", False))
    if "ival" in body:
        return int(body["ival"].get("ival", 0))
    if "fval" in body:
        try:
            return float(body["fval"].get("fval", "0"))
        except ValueError:
            return UNKNOWN
    if "sval" in body:
        return str(body["sval"].get("sval", ""))
    return UNKNOWN


def _cast(value: Any, type_name: Any) -> Any:
    if value is UNKNOWN or not isinstance(type_name, dict):
        return UNKNOWN
    if value is LITERAL or value is NULL:
        return value
    names = type_name.get("names") or []
    if not names or type_name.get("arrayBounds"):
        return UNKNOWN
    target = names[-1].get("String", {}).get("sval", "")
    if target in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        if isinstance(value, str):
            parsed = parse_bool(value)
            return UNKNOWN if parsed is None else parsed
        return UNKNOWN
    if target in _INT_TYPES:
        if isinstance(value, bool):
            return UNKNOWN  # only bool -> int4 exists; keep it simple
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return UNKNOWN
        return UNKNOWN
    if target in _NUM_TYPES:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                return UNKNOWN
        return UNKNOWN
    if target in ("text", "varchar") and isinstance(value, str):
        return value
    return UNKNOWN


def _bool_expr(body: dict[str, Any], sym: bool) -> Any:
    op = body.get("boolop")
    args = [_truth(a, sym) for a in body.get("args") or ()]
    if op == "NOT_EXPR":
        if len(args) != 1:
            return UNKNOWN
        v = args[0]
        return (not v) if isinstance(v, bool) else v
    if op == "OR_EXPR":
        return _any_true(args, NULL)
    # AND_EXPR (enum value 0 is omitted from the JSON)
    return _all_true(args, NULL)


def _op_name(body: dict[str, Any]) -> str | None:
    names = body.get("name") or []
    if not names:
        return None
    last = names[-1].get("String", {}).get("sval")
    return last if isinstance(last, str) else None


def _same_column(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    ca, cb = a.get("ColumnRef"), b.get("ColumnRef")
    return ca is not None and cb is not None and ca.get("fields") == cb.get("fields")


def _a_expr(body: dict[str, Any], sym: bool) -> Any:
    kind = body.get("kind", "AEXPR_OP")
    op = _op_name(body)
    lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
    if kind == "AEXPR_OP" and op in _COMPARISONS:
        if _same_column(lexpr, rexpr):
            # `x = x` is written to look like a filter but keeps every non-null row
            return op in ("=", "<=", ">=")
        return _compare(op, _value(lexpr, sym), _value(rexpr, sym))
    if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
        left, right = _value(lexpr, sym), _value(rexpr, sym)
        if left is UNKNOWN or right is UNKNOWN:
            return UNKNOWN
        if left is LITERAL or right is LITERAL:
            return LITERAL
        if left is NULL or right is NULL:
            same: Any = left is right
        else:
            same = _compare("=", left, right)
            if not isinstance(same, bool):
                return UNKNOWN
        return (not same) if kind == "AEXPR_DISTINCT" else same
    if kind == "AEXPR_IN" and isinstance(rexpr, dict) and "List" in rexpr:
        rexpr = rexpr["List"].get("items")
    if kind == "AEXPR_IN" and isinstance(rexpr, list) and op in ("=", "<>"):
        left = _value(lexpr, sym)
        results = [_compare(op, left, _value(item, sym)) for item in rexpr]
        if op == "=":
            return _any_true(results, UNKNOWN)
        return _all_true(results, UNKNOWN)
    return UNKNOWN


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


def _compare(op: str | None, left: Any, right: Any) -> Any:
    if left is UNKNOWN or right is UNKNOWN:
        return UNKNOWN
    if left is LITERAL or right is LITERAL:
        return LITERAL
    if left is NULL or right is NULL:
        return NULL
    pair = _coerce_pair(left, right)
    if pair is None:
        return UNKNOWN
    a, b = pair
    if isinstance(a, str) and op not in ("=", "<>", "!="):
        return UNKNOWN  # ordering of strings depends on the collation
    match op:
        case "=":
            return a == b
        case "<>" | "!=":
            return a != b
        case "<":
            return a < b
        case "<=":
            return a <= b
        case ">":
            return a > b
        case ">=":
            return a >= b
    return UNKNOWN


def _boolean_test(body: dict[str, Any], sym: bool) -> Any:
    v = _truth(body.get("arg"), sym)
    if v is UNKNOWN or v is LITERAL:
        return v
    match body.get("booltesttype", "IS_TRUE"):
        case "IS_TRUE":
            return v is True
        case "IS_NOT_TRUE":
            return v is not True
        case "IS_FALSE":
            return v is False
        case "IS_NOT_FALSE":
            return v is not False
        case "IS_UNKNOWN":
            return v is NULL
        case "IS_NOT_UNKNOWN":
            return v is not NULL
    return UNKNOWN


def _any_true(values: list[Any], otherwise: Any) -> Any:
    """Three-valued OR (also ``x IN (…)``): True wins, then a literal-dependent answer."""
    if any(v is True for v in values):
        return True
    if any(v is LITERAL for v in values):
        return LITERAL
    if all(v is False for v in values):
        return False
    return UNKNOWN if any(v is UNKNOWN for v in values) else otherwise


def _all_true(values: list[Any], otherwise: Any) -> Any:
    """Three-valued AND (also ``x <> ALL (…)``): False wins, then a literal-dependent answer."""
    if any(v is False for v in values):
        return False
    if any(v is LITERAL for v in values):
        return LITERAL
    if all(v is True for v in values):
        return True
    return UNKNOWN if any(v is UNKNOWN for v in values) else otherwise
