"""Walk libpg_query's JSON parse tree of one statement and collect the facts the proxy needs.

libpg_query's JSON wraps fields typed ``Node *`` as ``{"TypeName": {...}}`` but leaves fields
with a concrete struct type unwrapped (``InsertStmt.relation`` is a bare RangeVar object,
``SelectStmt.larg`` a bare SelectStmt). The walker therefore dispatches wrapped nodes by type
name and recognises the bare structs it cares about by field name or by their distinctive keys.
Walking the JSON (parsed by orjson) is several times faster than building pglast's node objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pglast import parser as pg_parser

from proxy.sql import catalog
from proxy.sql.commands import RELATION_OBJECTS, command_tag, statement_class
from proxy.sql.facts import CopyKind, StatementClass
from proxy.sql.folding import Judgement, Target, judge, parse_bool
from proxy.sql.regclass import call_arguments, is_regclass_cast, relation_of, string_constant

# Functions that run SQL text given as an argument (or on another server): not analysable.
# Built-ins come from the catalog (proxy/sql/catalog); dblink is an extension, not in it.
DYNAMIC_SQL_FUNCTIONS = catalog.DYNAMIC_SQL_FUNCTIONS | {
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "dblink_open",
}
# Node types that cannot contain a relation, a call or a statement: the walk skips them.
_LEAVES = frozenset(
    {
        "A_Const",
        "ColumnRef",
        "ParamRef",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "A_Star",
        "TypeName",
        "Alias",
        "RoleSpec",
        "SetToDefault",
        "SQLValueFunction",
        "CollateClause",
    }
)
# Suffix of the notes that explain why a statement is opaque.
OPAQUE_MARK = " [opaque]"
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# What pgwarden itself tells the server about the session (identity.propagate: guc): a
# client that sets one forges it (docs/tls.md, "Identity").
IDENTITY_SETTINGS = frozenset({"pgwarden.identity", "pgwarden.identity_source"})
_DML = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
}
_MERGE_ACTIONS = {"CMD_UPDATE": "UPDATE", "CMD_DELETE": "DELETE", "CMD_INSERT": "INSERT"}
# Utility statements whose named relation is the object being created or altered.
_WRITE_TARGET_FIELDS: dict[str, str] = {
    "AlterTableStmt": "relation",
    "IndexStmt": "relation",
    "RenameStmt": "relation",
    "AlterObjectSchemaStmt": "relation",
    "AlterOwnerStmt": "relation",
    "CreateStmt": "relation",
    "CreateSeqStmt": "sequence",
    "AlterSeqStmt": "sequence",
    "RefreshMatViewStmt": "relation",
    "CreateTrigStmt": "relation",
    "RuleStmt": "relation",
    "CreatePolicyStmt": "table",
    "AlterPolicyStmt": "table",
}
# Statements that store code for later instead of running it now: nothing inside is walked.
_STORED_BODIES = frozenset(
    {"CreateFunctionStmt", "CreateTrigStmt", "RuleStmt", "CreatePolicyStmt", "AlterPolicyStmt"}
)


def parse_json(text: str) -> list[dict[str, Any]]:
    """libpg_query parse as JSON statements; raises pglast's ParseError on a syntax error."""
    return load_statements(pg_parser.parse_sql_json(text))


def load_statements(data: str) -> list[dict[str, Any]]:
    """The statements of libpg_query's JSON parse output."""
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson caps nesting at 1024; very deep expressions need the stdlib decoder.
        tree = _deep_loads(data)
    stmts = tree.get("stmts") or []
    return [s for s in stmts if isinstance(s, dict)]


def _deep_loads(data: str) -> Any:
    import json
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 6000))
    try:
        return json.loads(data)
    finally:
        sys.setrecursionlimit(old)


def unwrap(node: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(node, dict) and len(node) == 1:
        ((kind, body),) = node.items()
        if isinstance(body, dict) and kind[:1].isupper():
            return kind, body
    return None


def _names(items: Any) -> list[str]:
    out: list[str] = []
    for item in items or ():
        if isinstance(item, dict):
            s = item.get("String")
            if isinstance(s, dict):
                out.append(str(s.get("sval", "")))
    return out


def _def_bool(defelem: dict[str, Any]) -> bool:
    """PostgreSQL's defGetBoolean: no argument means true."""
    arg = defelem.get("arg")
    if arg is None:
        return True
    found = unwrap(arg)
    if found is None:
        return True
    kind, body = found
    if kind == "Boolean":
        return bool(body.get("boolval", False))
    if kind == "Integer":
        return int(body.get("ival", 0)) != 0
    if kind == "String":
        parsed = parse_bool(str(body.get("sval", "")))
        return True if parsed is None else parsed  # an invalid value errors out: assume the worst
    return True


def _rv_name(rv: dict[str, Any]) -> str:
    schema = rv.get("schemaname")
    name = str(rv.get("relname", ""))
    return f"{schema}.{name}" if schema else name


class Collector:
    """Accumulates facts while walking; one per analysed top-level statement.

    ``params``: values of ``$n`` parameters (Bind values, EXECUTE arguments) when known; facts
    read from a parameter's value are then judged with it (see :mod:`proxy.sql.params`)."""

    def __init__(self, params: Mapping[int, Any] | None = None) -> None:
        self.params = params
        self.effective: dict[str, None] = {}
        self.classes: set[StatementClass] = set()
        self.relations: dict[tuple[str | None, str, str], None] = {}
        self.functions: dict[str, None] = {}
        self.missing_where = False
        self.copy: CopyKind | None = None
        self.role_change = False
        self.identity_change = False
        self.opaque = False
        self.notes: list[str] = []
        self.execute_name: str | None = None
        self.prepare_name: str | None = None
        self.prepared_kind: tuple[str, dict[str, Any]] | None = None
        self.ctes: frozenset[str] = frozenset()
        # Set when a fact was read from the value of a literal (a constant, a string parsed as
        # code, a file name...): the facts cache must not share these facts with texts that
        # differ only in their literals. Err on the side of setting it.
        self.literal_sensitive = False
        # Set when a fact depends on a $n parameter's value: re-judge with the bound values.
        self.param_sensitive = False
        # Set when part of the statement cannot be analysed the way the server will run it
        # (a DO block libpg_query's PL/pgSQL compiler rejects): the policy's on_unparsable.
        self.unparsable: str | None = None
        # Columns pinned to literals by the WHERE of the SELECT being walked (name = 'x').
        self.pinned: dict[tuple[str, ...], tuple[str, ...]] = {}

    # --- entry points -----------------------------------------------------------------------

    def statement(self, kind: str, body: dict[str, Any], via: str | None = None) -> str:
        """Record one executed statement (top level, or hidden inside another) and walk it."""
        tag = command_tag(kind, body)
        self.effective[tag] = None
        self.classes.add(statement_class(kind, body))
        if via is not None and kind != "SelectStmt":
            target = body.get("relation")
            on = f" on {_rv_name(target)}" if isinstance(target, dict) else ""
            self.note(f"{via}: {tag}{on}")
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, body)
        elif kind not in _STORED_BODIES:
            self.walk(body)
        return tag

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def mark_opaque(self, why: str) -> None:
        self.opaque = True
        self.note(why + OPAQUE_MARK)

    # --- generic walk -------------------------------------------------------------------------

    def walk(self, value: Any) -> None:
        # Hot path: the generic walk visits every node of every analysed statement, so it
        # avoids calls for leaves (constants, column references) that can hold no facts.
        if type(value) is list:
            for item in value:
                if type(item) is dict:
                    if len(item) == 1 and next(iter(item)) in _LEAVES:
                        continue
                    self.walk(item)
                elif type(item) is list:
                    self.walk(item)
            return
        if type(value) is not dict:
            return
        if len(value) == 1:
            ((kind, body),) = value.items()
            if type(body) is dict and kind[:1].isupper():
                if kind in _LEAVES:
                    return
                handler = _HANDLERS.get(kind)
                if handler is not None:
                    handler(self, body)
                else:
                    self.walk(body)
                return
        if "relname" in value and "relpersistence" in value:
            self.range_var(value)
            return
        if "funcname" in value and "funcformat" in value:
            self.func_call(value)
            return
        for item in value.values():
            if type(item) is dict:
                if len(item) == 1 and next(iter(item)) in _LEAVES:
                    continue
                self.walk(item)
            elif type(item) is list:
                self.walk(item)

    def walk_except(self, body: dict[str, Any], skip: tuple[str, ...]) -> None:
        for key, item in body.items():
            if key not in skip and (type(item) is dict or type(item) is list):
                self.walk(item)

    # --- relations and functions -----------------------------------------------------------

    def relation(self, rv: Any, access: str, cte_visible: bool = True) -> None:
        if isinstance(rv, dict) and "RangeVar" in rv:
            rv = rv["RangeVar"]
        if not isinstance(rv, dict) or "relname" not in rv:
            return
        schema = rv.get("schemaname")
        name = str(rv["relname"])
        if cte_visible and schema is None and name in self.ctes:
            return
        self.relations[(str(schema) if schema else None, name, access)] = None
        # pg_catalog is searched first unless search_path names it later: unqualified system
        # view names are taken as the system views.
        calls = catalog.VIEW_FUNCTIONS.get((str(schema or "pg_catalog"), name))
        if calls and schema in (None, "pg_catalog"):
            for call in sorted(calls):
                self.functions[call] = None
            self.note(f"reading {name} calls {', '.join(sorted(calls))}()")

    def range_var(self, body: dict[str, Any]) -> None:
        self.relation(body, "read")

    def func_call(self, body: dict[str, Any]) -> None:
        parts = _names(body.get("funcname"))
        if body.get("funcformat") == "COERCE_SQL_SYNTAX" and parts[:1] == ["pg_catalog"]:
            parts = parts[1:]  # SQL-syntax forms (EXTRACT, SUBSTRING FROM...) were not written so
        if parts:
            name = ".".join(parts)
            self.functions[name] = None
            base = parts[-1]
            if base == "set_config":
                self._set_config(body.get("args") or [])
            elif base in DYNAMIC_SQL_FUNCTIONS:
                self.mark_opaque(f"{name}() runs SQL the proxy cannot see")
            for arg, access in call_arguments(base, body.get("args") or []):
                self.regclass_literal(arg, access)
        self.walk_except(body, ("funcname",))

    def type_cast(self, body: dict[str, Any]) -> None:
        if is_regclass_cast(body):
            self.regclass_literal(body.get("arg"), "read")
        self.walk(body.get("arg"))

    def regclass_literal(self, node: Any, access: str) -> None:
        """A string naming a relation (regclass): the server resolves it when it runs."""
        text = string_constant(node)
        param = unwrap(node)
        if text is None and param is not None and param[0] == "ParamRef":
            self.param_sensitive = True
            value = (self.params or {}).get(int(param[1].get("number", 0)))
            text = value if isinstance(value, str) else None
        if text is None:
            return
        self.literal_sensitive = True  # the relation's name is the literal's value
        found = relation_of(text)
        if found is None:
            self.note(f"regclass {text!r} names a relation by OID or not at all")
            return
        self.relations[(found[0], found[1], access)] = None

    def _set_config(self, args: list[Any]) -> None:
        settings = self._setting_names(args[0] if args else None)
        if settings is None:
            self.role_change = self.identity_change = True
            self.note("set_config() with a computed setting name may change the role")
            return
        for setting in settings:
            if setting in _ROLE_SETTINGS:
                self.role_change = True
                self.note(f"set_config('{setting}', …) changes the current role")
            elif setting in IDENTITY_SETTINGS:
                self.identity_change = True
                self.note(f"set_config('{setting}', …) sets what pgwarden tells the server")

    def _setting_names(self, node: Any) -> tuple[str, ...] | None:
        """The setting names set_config's first argument can have; None: cannot tell."""
        found = unwrap(node)
        if found is not None and found[0] == "TypeCast":
            found = unwrap(found[1].get("arg"))
        if found is None:
            return None
        kind, body = found
        if kind == "A_Const" and "sval" in body:
            self.literal_sensitive = True  # the setting name is a literal's value
            return (str(body["sval"].get("sval", "")).lower(),)
        if kind == "ParamRef":
            self.param_sensitive = True
            value = (self.params or {}).get(int(body.get("number", 0)))
            return (value.lower(),) if isinstance(value, str) else None
        if kind == "ColumnRef":
            # pg_dump: set_config(name, …) FROM pg_settings WHERE name = 'restrict_…'
            fields = tuple(_names(body.get("fields")))
            pinned = self.pinned.get(fields)
            if pinned is not None:
                self.literal_sensitive = True
                return tuple(v.lower() for v in pinned)
        return None

    def a_indirection(self, body: dict[str, Any]) -> None:
        for item in body.get("indirection") or ():
            s = item.get("String") if isinstance(item, dict) else None
            if isinstance(s, dict) and s.get("sval"):
                # (expr).name is a call name(expr) when expr has no column called name
                name = str(s["sval"])
                self.functions[name] = None
                self.note(f"functional notation (…).{name} may call {name}()")
        self.walk(body.get("arg"))
        self.walk(body.get("indirection"))

    # --- WITH scoping -------------------------------------------------------------------------

    def _with(self, clause: Any) -> None:
        if not isinstance(clause, dict):
            return
        ctes = [c["CommonTableExpr"] for c in clause.get("ctes") or () if "CommonTableExpr" in c]
        if clause.get("recursive"):
            self.ctes = self.ctes | {str(c.get("ctename")) for c in ctes}
        for cte in ctes:
            query = cte.get("ctequery")
            found = unwrap(query)
            if found is not None and found[0] in _DML:
                self.statement(found[0], found[1], via="data-modifying CTE")
            else:
                self.walk(query)
            self.ctes = self.ctes | {str(cte.get("ctename"))}

    # --- statements ---------------------------------------------------------------------------

    def select(self, body: dict[str, Any]) -> None:
        saved = self.ctes
        saved_pinned = self.pinned
        self.pinned = _pinned_columns(body.get("whereClause"))
        self._with(body.get("withClause"))
        into = body.get("intoClause")
        if isinstance(into, dict):
            self.relation(into.get("rel"), "write", cte_visible=False)
            self.effective["CREATE TABLE AS"] = None
            self.classes.update(("ddl", "write", "read"))
            self.note(f"SELECT INTO creates table {_rv_name(into.get('rel') or {})}")
        for key in ("larg", "rarg"):
            arm = body.get(key)
            if isinstance(arm, dict):
                self.select(arm)
        self.walk_except(body, ("withClause", "intoClause", "larg", "rarg"))
        self.ctes = saved
        self.pinned = saved_pinned

    def _dml(self, tag: str, body: dict[str, Any], skip: tuple[str, ...]) -> None:
        saved = self.ctes
        self._with(body.get("withClause"))
        self.effective[tag] = None
        self.classes.add("write")
        self.relation(body.get("relation"), "write", cte_visible=False)
        self.walk_except(body, ("withClause", "relation", *skip))
        self.ctes = saved

    def insert(self, body: dict[str, Any]) -> None:
        conflict = body.get("onConflictClause")
        if isinstance(conflict, dict) and conflict.get("action") == "ONCONFLICT_UPDATE":
            self.effective["UPDATE"] = None
            target = _rv_name(body["relation"])
            self.note(f"INSERT … ON CONFLICT DO UPDATE updates {target}")
            source = (body.get("selectStmt") or {}).get("SelectStmt")
            if source is None or "valuesLists" in source:
                self.note("the rows it may update are at most the VALUES rows written")
            else:
                # An upsert of a query's rows can update every row: its DO UPDATE is an
                # UPDATE, limited only by its own WHERE.
                verdict = self._judge(conflict.get("whereClause"), body.get("relation"), ())
                if not verdict.limits:
                    self.missing_where = True
                    self.note(
                        f"ON CONFLICT DO UPDATE of a query's rows may update every row of {target}"
                    )
        self._dml("INSERT", body, ())

    def _judge(self, condition: Any, relation: Any, other_from_items: Any) -> Judgement:
        verdict = judge(condition, Target.of(relation, other_from_items), self.params)
        if verdict.literal_sensitive:
            self.literal_sensitive = True
        if verdict.param_sensitive:
            self.param_sensitive = True
        return verdict

    def _check_where(self, tag: str, body: dict[str, Any], other_from_items: Any) -> None:
        where = body.get("whereClause")
        if not self._judge(where, body.get("relation"), other_from_items).limits:
            self.missing_where = True
            how = "without WHERE" if where is None else "with a WHERE that does not limit the rows"
            self.note(f"{tag} on {_rv_name(body.get('relation') or {})} {how}")

    def update(self, body: dict[str, Any]) -> None:
        self._check_where("UPDATE", body, body.get("fromClause"))
        self._dml("UPDATE", body, ())

    def delete(self, body: dict[str, Any]) -> None:
        self._check_where("DELETE", body, body.get("usingClause"))
        self._dml("DELETE", body, ())

    def merge(self, body: dict[str, Any]) -> None:
        target = _rv_name(body.get("relation") or {})
        relation = body.get("relation")
        source = [body.get("sourceRelation")]
        join_limits = self._judge(body.get("joinCondition"), relation, source).limits
        for clause in body.get("mergeWhenClauses") or ():
            when = clause.get("MergeWhenClause", {}) if isinstance(clause, dict) else {}
            action = _MERGE_ACTIONS.get(str(when.get("commandType")))
            if action is None:
                continue
            self.effective[action] = None
            self.note(f"MERGE action {action} on {target}")
            if action == "INSERT":
                continue
            kind = when.get("matchKind", "MERGE_WHEN_MATCHED")
            # MATCHED: the target rows the join matches; NOT MATCHED BY SOURCE: those it
            # does not — either way only the join (for MATCHED) and the action's condition
            # limit the target rows.
            limited = self._judge(when.get("condition"), relation, source).limits
            if kind == "MERGE_WHEN_MATCHED":
                limited = limited or join_limits
            if not limited:
                self.missing_where = True
                self.note(f"MERGE {action} on {target} may touch every row")
        self._dml("MERGE", body, ())

    def explain(self, body: dict[str, Any]) -> None:
        analyze = False
        for option in body.get("options") or ():
            elem = option.get("DefElem") if isinstance(option, dict) else None
            if isinstance(elem, dict) and elem.get("defname") == "analyze":
                analyze = _def_bool(elem)
                if (unwrap(elem.get("arg")) or ("Boolean",))[0] != "Boolean":
                    self.literal_sensitive = True  # ANALYZE 0, ANALYZE 'off'...
        found = unwrap(body.get("query"))
        if found is None:
            return
        if analyze:
            self.statement(found[0], found[1], via="EXPLAIN ANALYZE executes")
        else:
            self.references(body.get("query"), "EXPLAIN without ANALYZE only plans")

    def references(self, node: Any, why: str) -> None:
        """Relations named by code that is planned or stored but not run now: listed as read."""
        inner = Collector()
        inner.ctes = self.ctes
        inner.walk(node)
        self.literal_sensitive |= inner.literal_sensitive
        # Stored code that sets pgwarden's own settings would set them each time it runs.
        self.identity_change |= inner.identity_change
        for schema, name, _access in inner.relations:
            self.relations[(schema, name, "read")] = None
        if inner.effective or inner.functions:
            self.note(why)

    def prepare(self, body: dict[str, Any]) -> None:
        self.prepare_name = str(body.get("name", ""))
        self.prepared_kind = unwrap(body.get("query"))
        why = f"PREPARE {self.prepare_name} stores its body; it runs at EXECUTE"
        self.note(why)
        self.references(body.get("query"), why)  # the server resolves (and locks) them now

    def execute(self, body: dict[str, Any]) -> None:
        self.execute_name = str(body.get("name", ""))
        self.opaque = True  # until resolve_execute() supplies the prepared body
        self.note(f"EXECUTE {self.execute_name}: prepared body unknown until resolved")
        self.walk(body.get("params"))

    def call(self, body: dict[str, Any]) -> None:
        # Judged like SELECT f(): a call of a named routine whose body is not visible here
        # (function rules match it; its creation was flagged as DDL).
        funccall = body.get("funccall")
        if isinstance(funccall, dict):
            self.func_call(funccall)
            name = ".".join(_names(funccall.get("funcname")))
            self.note(
                f"CALL runs procedure {name} (like any function call, its body is not visible)"
            )

    def do(self, body: dict[str, Any]) -> None:
        self.literal_sensitive = True  # the body is a string literal parsed as code
        code: str | None = None
        language = "plpgsql"
        for arg in body.get("args") or ():
            elem = arg.get("DefElem") if isinstance(arg, dict) else None
            if not isinstance(elem, dict):
                continue
            value = elem.get("arg", {}).get("String", {}).get("sval", "")
            if elem.get("defname") == "as":
                code = str(value)
            elif elem.get("defname") == "language":
                language = str(value).lower()
        if language != "plpgsql" or code is None:
            self.mark_opaque(f"DO block in language {language} cannot be analysed")
            return
        from proxy.sql.plpgsql import walk_do_block

        walk_do_block(self, code)

    def copy_stmt(self, body: dict[str, Any]) -> None:
        self.literal_sensitive = True  # COPY FROM '' reads as STDIN in the JSON tree
        is_from = bool(body.get("is_from"))
        if body.get("is_program"):
            self.copy = "program"
            self.note("COPY … PROGRAM runs a shell command on the server")
        elif body.get("filename"):
            self.copy = "file"
        else:
            self.copy = "stdin" if is_from else "stdout"
        self.relation(body.get("relation"), "write" if is_from else "read", cte_visible=False)
        query = unwrap(body.get("query"))
        if query is not None:
            if query[0] in _DML:
                self.statement(query[0], query[1], via="COPY (query) runs")
            else:
                self.walk(body.get("query"))
        self.walk_except(body, ("relation", "query"))

    def variable_set(self, body: dict[str, Any]) -> None:
        name = str(body.get("name", "")).lower()
        if name in IDENTITY_SETTINGS and body.get("kind") == "VAR_SET_VALUE":
            # A value of the client's own (RESET and SET … TO DEFAULT restore pgwarden's).
            self.identity_change = True
            self.note(f"SET {name} sets what pgwarden tells the server")
        if name in _ROLE_SETTINGS:
            self.role_change = True
            scope = "SET LOCAL" if body.get("is_local") else "SET"
            verb = "RESET" if body.get("kind") == "VAR_RESET" else scope
            self.note(f"{verb} {name.replace('_', ' ')} changes the current role")

    def discard(self, body: dict[str, Any]) -> None:
        if body.get("target", "DISCARD_ALL") == "DISCARD_ALL":
            self.role_change = True
            self.note("DISCARD ALL resets the session authorization and drops prepared statements")

    def drop(self, body: dict[str, Any]) -> None:
        if body.get("removeType") not in RELATION_OBJECTS:
            return
        for obj in body.get("objects") or ():
            items = obj.get("List", {}).get("items") if isinstance(obj, dict) else None
            parts = _names(items)
            if parts:
                schema = parts[-2] if len(parts) > 1 else None
                self.relations[(schema, parts[-1], "write")] = None

    def truncate(self, body: dict[str, Any]) -> None:
        for rv in body.get("relations") or ():
            self.relation(rv, "write", cte_visible=False)

    def grant(self, body: dict[str, Any]) -> None:
        on_relations = body.get("objtype", "OBJECT_TABLE") in RELATION_OBJECTS
        if on_relations and body.get("targtype", "ACL_TARGET_OBJECT") == "ACL_TARGET_OBJECT":
            for rv in body.get("objects") or ():
                self.relation(rv, "write", cte_visible=False)

    def view(self, body: dict[str, Any]) -> None:
        self.relation(body.get("view"), "write", cte_visible=False)
        self.references(body.get("query"), "view body is stored, not run")

    def create_table_as(self, body: dict[str, Any]) -> None:
        into = body.get("into") or {}
        self.relation(into.get("rel"), "write", cte_visible=False)
        self.classes.add("write")
        if body.get("objtype") == "OBJECT_VIEW":
            self.references(body.get("query"), "view body is stored, not run")
        elif into.get("skipData"):
            self.references(body.get("query"), "WITH NO DATA: the query is not run")
        else:
            self.classes.add("read")
            self.walk(body.get("query"))

    def stored(self, kind: str, body: dict[str, Any]) -> None:
        field = _WRITE_TARGET_FIELDS.get(kind)
        if field is not None:
            self.relation(body.get(field), "write", cte_visible=False)
        why = "the body is stored, not run: its statements and calls are not executed now"
        self.note(why)
        # The server resolves the names in rule actions, policy expressions and SQL-language
        # function bodies at creation: list those relations as referenced (read).
        if kind == "CreateFunctionStmt":
            self.literal_sensitive = True  # the language and body are string literals
            for option in body.get("options") or ():
                elem = option.get("DefElem") if isinstance(option, dict) else None
                arg = elem.get("arg") if isinstance(elem, dict) else None
                if isinstance(arg, dict) and "VariableSetStmt" in arg:
                    self.variable_set(arg["VariableSetStmt"])  # SET clause: runs at each call
            for code in _sql_function_bodies(body):
                self.references(code, why)
            self._plpgsql_sets_identity(body)
        elif kind != "CreateTrigStmt":
            self.references(
                [
                    body.get("actions"),
                    body.get("whereClause"),
                    body.get("qual"),
                    body.get("with_check"),
                ],
                why,
            )

    def _plpgsql_sets_identity(self, body: dict[str, Any]) -> None:
        """A LANGUAGE plpgsql body that sets pgwarden's own settings (read as a DO block;
        a body that cannot be read that way is left alone: only this fact is sought)."""
        language, code = _function_code(body)
        if language != "plpgsql" or code is None:
            return
        from proxy.sql.plpgsql import walk_do_block

        inner = Collector()
        walk_do_block(inner, code)
        if inner.identity_change:
            self.identity_change = True
            self.note("the function body sets what pgwarden tells the server")

    def comment(self, body: dict[str, Any]) -> None:
        objtype = body.get("objtype")
        parts = _names((body.get("object") or {}).get("List", {}).get("items"))
        if objtype == "OBJECT_COLUMN":
            parts = parts[:-1]
        elif objtype not in RELATION_OBJECTS:
            return
        if parts:
            self.relations[(parts[-2] if len(parts) > 1 else None, parts[-1], "write")] = None

    def foreign_table(self, body: dict[str, Any]) -> None:
        base = body.get("base") or {}
        self.relation(base.get("relation"), "write", cte_visible=False)
        self.walk_except(base, ("relation",))

    def with_target(self, kind: str, body: dict[str, Any]) -> None:
        field = _WRITE_TARGET_FIELDS[kind]
        self.relation(body.get(field), "write", cte_visible=False)
        self.walk_except(body, (field,))


Handler = Callable[[Collector, dict[str, Any]], None]


def _pinned_columns(where: Any) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Columns a WHERE pins to string literals: top-level AND conjuncts ``col = 'x'`` or
    ``col IN ('x', 'y')`` (in a row the SELECT returns, the column has one of those values)."""
    found = unwrap(where)
    if found is None:
        return {}
    kind, body = found
    if kind == "BoolExpr" and body.get("boolop", "AND_EXPR") == "AND_EXPR":
        out: dict[tuple[str, ...], tuple[str, ...]] = {}
        for arg in body.get("args") or ():
            out.update(_pinned_columns(arg))
        return out
    if kind != "A_Expr" or _names(body.get("name")) != ["="]:
        return {}
    column = unwrap(body.get("lexpr"))
    if column is None or column[0] != "ColumnRef":
        return {}
    rexpr = body.get("rexpr")
    items = rexpr["List"].get("items") if isinstance(rexpr, dict) and "List" in rexpr else [rexpr]
    if body.get("kind", "AEXPR_OP") not in ("AEXPR_OP", "AEXPR_IN"):
        return {}
    values = [string_constant(item) for item in items or ()]
    if not values or any(v is None for v in values):
        return {}
    return {tuple(_names(column[1].get("fields"))): tuple(v for v in values if v is not None)}


def _function_code(body: dict[str, Any]) -> tuple[str, str | None]:
    """A CREATE FUNCTION's language (lower case, '' if not given) and its one-string body."""
    language, code = "", None
    for option in body.get("options") or ():
        elem = option.get("DefElem") if isinstance(option, dict) else None
        if not isinstance(elem, dict):
            continue
        if elem.get("defname") == "language":
            language = str(elem.get("arg", {}).get("String", {}).get("sval", "")).lower()
        elif elem.get("defname") == "as":
            parts = _names((elem.get("arg") or {}).get("List", {}).get("items"))
            code = parts[0] if len(parts) == 1 else None
    return language, code


def _sql_function_bodies(body: dict[str, Any]) -> list[Any]:
    """Parsed statements of a LANGUAGE sql function body (string or BEGIN ATOMIC)."""
    if body.get("sql_body") is not None:
        return [body["sql_body"]]
    language, code = _function_code(body)
    if language != "sql" or code is None:
        return []
    try:
        return [raw.get("stmt") for raw in parse_json(code)]
    except Exception:
        return []  # the server rejects an invalid body (with check_function_bodies on)


def _stored_handler(kind: str) -> Handler:
    return lambda c, body: c.stored(kind, body)


def _target_handler(kind: str) -> Handler:
    return lambda c, body: c.with_target(kind, body)


_HANDLERS: dict[str, Handler] = {
    "RangeVar": Collector.range_var,
    "FuncCall": Collector.func_call,
    "TypeCast": Collector.type_cast,
    "A_Indirection": Collector.a_indirection,
    "SelectStmt": Collector.select,
    "InsertStmt": Collector.insert,
    "UpdateStmt": Collector.update,
    "DeleteStmt": Collector.delete,
    "MergeStmt": Collector.merge,
    "ExplainStmt": Collector.explain,
    "PrepareStmt": Collector.prepare,
    "ExecuteStmt": Collector.execute,
    "CallStmt": Collector.call,
    "DoStmt": Collector.do,
    "CopyStmt": Collector.copy_stmt,
    "VariableSetStmt": Collector.variable_set,
    "DiscardStmt": Collector.discard,
    "DropStmt": Collector.drop,
    "TruncateStmt": Collector.truncate,
    "GrantStmt": Collector.grant,
    "ViewStmt": Collector.view,
    "CreateTableAsStmt": Collector.create_table_as,
    "CreateForeignTableStmt": Collector.foreign_table,
    "CommentStmt": Collector.comment,
    "SecLabelStmt": Collector.comment,
}
for _kind in _STORED_BODIES:
    _HANDLERS[_kind] = _stored_handler(_kind)
for _kind in _WRITE_TARGET_FIELDS:
    if _kind not in _STORED_BODIES:
        _HANDLERS[_kind] = _target_handler(_kind)
