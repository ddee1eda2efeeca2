"""Policy evaluation on hand-built facts: every condition kind, combining, modes, identifiers.

Facts are built directly here so each test states exactly what the engine sees; the shipped
policies are tested on facts from the real SQL analyser in test_policy_shipped.py.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import config
from proxy.gate import Gate
from proxy.identity import Identity
from proxy.policy.engine import Policy
from proxy.policy.loader import load_policy
from proxy.sql.facts import CopyKind, QueryFacts, Relation, StatementClass, StatementFacts

ALICE = Identity(user="alice", database="app", application_name="psql", client_addr="10.1.2.3")


def stmt(
    command: str = "SELECT",
    *,
    cls: StatementClass = "read",
    hidden: tuple[str, ...] = (),
    hidden_classes: tuple[StatementClass, ...] = (),
    relations: tuple[Relation, ...] = (),
    functions: tuple[str, ...] = (),
    missing_where: bool = False,
    copy: CopyKind | None = None,
    role_change: bool = False,
    opaque: bool = False,
    text: str = "",
) -> StatementFacts:
    return StatementFacts(
        text=text or command,
        command=command,
        statement_class=cls,
        effective_commands=frozenset({command, *hidden}),
        classes=frozenset({cls, *hidden_classes}),
        relations=relations,
        functions=frozenset(functions),
        missing_where=missing_where,
        copy=copy,
        role_change=role_change,
        opaque=opaque,
        fingerprint="0",
    )


def query(*statements: StatementFacts) -> QueryFacts:
    return QueryFacts("; ".join(s.text for s in statements), statements)


def rel(qualified: str, access: str = "read") -> Relation:
    schema, _, name = qualified.rpartition(".")
    return Relation(schema or None, name, "write" if access == "write" else "read")


def policy(tmp_path: Path, text: str) -> Policy:
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_policy([f])


def one_rule(tmp_path: Path, when: str, defaults: str = "") -> Policy:
    body = textwrap.indent(textwrap.dedent(when).strip(), " " * 6)
    return policy(
        tmp_path,
        f"{defaults}\nrules:\n  - id: r\n    action: block\n    when:\n{body}\n",
    )


def action(p: Policy, facts: QueryFacts, who: Identity = ALICE, now: datetime | None = None) -> str:
    decision = p.evaluate(who, facts, now)
    explained = p.explain(who, facts, now).decision
    # The fast path (cached prefilter) and the explaining path must always agree.
    assert explained == decision
    return decision.action


# --- identity conditions ------------------------------------------------------------------


def test_users_databases_applications_are_case_sensitive_globs(tmp_path: Path) -> None:
    p = one_rule(tmp_path, 'users: ["ali*", bob]\ndatabases: [app]\napplications: ["ps?l"]')
    q = query(stmt())
    assert action(p, q) == "block"
    assert action(p, q, Identity("Alice", "app", "psql")) == "allow"
    assert action(p, q, Identity("bob", "app", "psql")) == "block"
    assert action(p, q, Identity("bob", "other", "psql")) == "allow"
    assert action(p, q, Identity("bob", "app", "pgadmin")) == "allow"


def test_client_addrs_cidrs_and_unix(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "client_addrs: [10.0.0.0/8, '::1/128', unix]")
    q = query(stmt())
    assert action(p, q, Identity("u", "d", client_addr="10.200.0.1")) == "block"
    assert action(p, q, Identity("u", "d", client_addr="::ffff:10.0.0.5")) == "block"
    assert action(p, q, Identity("u", "d", client_addr="::1")) == "block"
    assert action(p, q, Identity("u", "d", client_addr="unix")) == "block"
    assert action(p, q, Identity("u", "d", client_addr="192.168.1.1")) == "allow"
    assert action(p, q, Identity("u", "d", client_addr="")) == "allow"


# --- statement conditions -----------------------------------------------------------------


def test_commands_match_hidden_commands_and_globs(tmp_path: Path) -> None:
    p = one_rule(tmp_path, 'commands: [DELETE, "drop *"]')
    assert action(p, query(stmt("DELETE", cls="write"))) == "block"
    # WITH d AS (DELETE …) SELECT 1 and EXPLAIN ANALYZE DELETE: the DELETE still executes.
    assert action(p, query(stmt("SELECT", hidden=("DELETE",), hidden_classes=("write",)))) == (
        "block"
    )
    assert action(p, query(stmt("EXPLAIN", cls="misc", hidden=("DELETE",)))) == "block"
    assert action(p, query(stmt("DROP TABLE", cls="ddl"))) == "block"
    assert action(p, query(stmt("DROPX", cls="ddl"))) == "allow"
    assert action(p, query(stmt("SELECT"))) == "allow"


def test_classes_include_hidden_classes(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "classes: [write]")
    assert action(p, query(stmt("SELECT"))) == "allow"
    assert action(p, query(stmt("SELECT", hidden=("UPDATE",), hidden_classes=("write",)))) == (
        "block"
    )


def test_tables_name_matches_any_schema_and_qualified_needs_schema(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "tables: [customers, 'billing.pay*']")
    assert action(p, query(stmt(relations=(rel("crm.customers"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("customers"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("billing.payments"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("public.payments"),)))) == "allow"
    # No search_path in defaults: an unqualified reference may be billing's table.
    assert action(p, query(stmt(relations=(rel("payments"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("orders"),)))) == "allow"


def test_search_path_resolves_unqualified_references(tmp_path: Path) -> None:
    defaults = "defaults:\n  search_path: [$user, public]\n"
    p = one_rule(tmp_path, "tables: [billing.payments, public.orders, alice.notes]", defaults)
    assert action(p, query(stmt(relations=(rel("payments"),)))) == "allow"
    assert action(p, query(stmt(relations=(rel("orders"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("notes"),)))) == "block"  # $user is alice
    assert action(p, query(stmt(relations=(rel("notes"),))), Identity("bob", "app")) == "allow"
    p2 = one_rule(tmp_path, "tables: [pg_catalog.pg_authid]", defaults)
    # pg_catalog is searched first even when search_path does not name it.
    assert action(p2, query(stmt(relations=(rel("pg_authid"),)))) == "block"


def test_identifier_case_rules(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "tables: ['\"Users\"']")
    assert action(p, query(stmt(relations=(rel("Users"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("users"),)))) == "allow"
    p = one_rule(tmp_path, "tables: [Users]")  # unquoted folds to lower case
    assert action(p, query(stmt(relations=(rel("users"),)))) == "block"
    assert action(p, query(stmt(relations=(rel("Users"),)))) == "allow"
    p = one_rule(tmp_path, "tables: ['U&\"\\0075sers\"', 'App.\"Weird.Name\"']")
    assert action(p, query(stmt(relations=(rel("users"),)))) == "block"
    assert action(p, query(stmt(relations=(Relation("app", "Weird.Name", "read"),)))) == "block"
    assert action(p, query(stmt(relations=(Relation("App", "Weird.Name", "read"),)))) == "allow"


def test_access_with_tables_matches_only_that_access(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "tables: [customers]\naccess: write")
    reads_customers_writes_log = stmt(
        "INSERT", cls="write", relations=(rel("customers"), rel("log", "write"))
    )
    assert action(p, query(reads_customers_writes_log)) == "allow"
    assert action(p, query(stmt("UPDATE", relations=(rel("customers", "write"),)))) == "block"
    p = one_rule(tmp_path, "access: write")
    assert action(p, query(reads_customers_writes_log)) == "block"
    assert action(p, query(stmt(relations=(rel("customers"),)))) == "allow"


def test_functions_by_name_in_any_schema_or_qualified(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "functions: [pg_read_file, 'pg_ls_*', public.danger]")
    assert action(p, query(stmt(functions=("pg_read_file",)))) == "block"
    assert action(p, query(stmt(functions=("pg_catalog.pg_read_file",)))) == "block"
    assert action(p, query(stmt(functions=("pg_ls_waldir",)))) == "block"
    assert action(p, query(stmt(functions=("other.danger",)))) == "allow"
    assert action(p, query(stmt(functions=("danger",)))) == "block"
    assert action(p, query(stmt(functions=("now",)))) == "allow"


@pytest.mark.parametrize(
    ("key", "field"),
    [("missing_where", "missing_where"), ("opaque", "opaque"), ("role_change", "role_change")],
)
def test_boolean_facts(tmp_path: Path, key: str, field: str) -> None:
    p = one_rule(tmp_path, f"{key}: true")
    assert action(p, query(stmt(**{field: True}))) == "block"  # type: ignore[arg-type]
    assert action(p, query(stmt())) == "allow"
    p = one_rule(tmp_path, f"{key}: false")
    assert action(p, query(stmt(**{field: True}))) == "allow"  # type: ignore[arg-type]
    assert action(p, query(stmt())) == "block"


def test_multi_statement(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "multi_statement: true")
    assert action(p, query(stmt(), stmt())) == "block"
    assert action(p, query(stmt())) == "allow"


def test_copy_kinds(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "copy: [program, file]")
    assert action(p, query(stmt("COPY", copy="program"))) == "block"
    assert action(p, query(stmt("COPY", copy="file"))) == "block"
    assert action(p, query(stmt("COPY", copy="stdout"))) == "allow"
    assert action(p, query(stmt())) == "allow"
    p = one_rule(tmp_path, "copy: true")
    assert action(p, query(stmt("COPY", copy="stdin"))) == "block"
    assert action(p, query(stmt())) == "allow"


def test_sql_regex_on_statement_text(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "sql_regex: '(?i)\\bpg_sleep\\b'")
    assert action(p, query(stmt(text="select PG_SLEEP(10)"))) == "block"
    assert action(p, query(stmt(text="select 1"))) == "allow"


def test_hours_with_fixed_now_and_time_zone(tmp_path: Path) -> None:
    p = one_rule(tmp_path, 'hours: ["Mon-Fri 09:00-18:00 Europe/Berlin", "Sat 22:00-02:00"]')
    q = query(stmt())
    # Monday 2026-03-02 08:30 UTC is 09:30 in Berlin (CET, UTC+1): inside.
    assert action(p, q, now=datetime(2026, 3, 2, 8, 30, tzinfo=UTC)) == "block"
    # 17:30 UTC is 18:30 in Berlin: outside.
    assert action(p, q, now=datetime(2026, 3, 2, 17, 30, tzinfo=UTC)) == "allow"
    # Summer time (CEST, UTC+2): 07:30 UTC is 09:30 in Berlin.
    assert action(p, q, now=datetime(2026, 7, 6, 7, 30, tzinfo=UTC)) == "block"
    assert action(p, q, now=datetime(2026, 7, 4, 8, 30, tzinfo=UTC)) == "allow"  # Saturday
    # Saturday 22:00 to Sunday 02:00 UTC, crossing midnight.
    assert action(p, q, now=datetime(2026, 7, 4, 23, 0, tzinfo=UTC)) == "block"
    assert action(p, q, now=datetime(2026, 7, 5, 1, 59, tzinfo=UTC)) == "block"
    assert action(p, q, now=datetime(2026, 7, 5, 2, 0, tzinfo=UTC)) == "allow"
    assert action(p, q, now=datetime(2026, 7, 5, 23, 0, tzinfo=UTC)) == "allow"  # Sunday night
    # A naive time is UTC.
    assert action(p, q, now=datetime(2026, 3, 2, 8, 30)) == "block"


# --- combining ----------------------------------------------------------------------------


COMBINE = """
defaults:
  action: {default}
rules:
  - id: allow-select
    when: {{commands: [SELECT]}}
    action: allow
  - id: flag-orders
    when: {{tables: [orders]}}
    action: flag
    severity: low
    message: orders touched
  - id: flag-orders-loud
    when: {{tables: [orders]}}
    action: flag
    severity: high
    message: orders touched, loudly
    notify: true
  - id: block-delete
    when: {{commands: [DELETE]}}
    unless: {{users: [dba]}}
    action: block
    message: no deletes
    sqlstate: "42P01"
"""


def test_strongest_action_wins_and_message_comes_from_it(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="allow"))
    delete_orders = query(stmt("DELETE", cls="write", relations=(rel("orders", "write"),)))
    d = p.evaluate(ALICE, delete_orders)
    assert d.action == "block"
    assert [r.id for r in d.rules] == ["flag-orders", "flag-orders-loud", "block-delete"]
    assert (d.message, d.sqlstate, d.notify) == ("no deletes", "42P01", False)
    assert d.rules[2].source == f"{tmp_path / 'p.yaml'}:18"
    d = p.evaluate(Identity("dba", "app"), delete_orders)
    # Among flags, the higher severity decides the message; notify comes with it.
    assert (d.action, d.message, d.notify) == ("flag", "orders touched, loudly", True)
    select_orders = query(stmt(relations=(rel("orders"),)))
    assert p.evaluate(ALICE, select_orders).action == "flag"


def test_allow_rule_beats_default_block_but_not_a_block_rule(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="block"))
    d = p.evaluate(ALICE, query(stmt("SELECT")))
    assert (d.action, [r.id for r in d.rules]) == ("allow", ["allow-select"])
    d = p.evaluate(ALICE, query(stmt("INSERT", cls="write")))
    assert d.action == "block"
    assert [(r.id, r.source) for r in d.rules] == [("default", f"{tmp_path / 'p.yaml'}:1")]
    assert d.reason == "no rule matched: defaults.action is block"
    d = p.evaluate(ALICE, query(stmt("SELECT", hidden=("DELETE",), hidden_classes=("write",))))
    assert (d.action, d.message) == ("block", "no deletes")


def test_multi_statement_message_is_blocked_whole(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="allow"))
    d = p.evaluate(ALICE, query(stmt("SELECT"), stmt("DELETE", cls="write"), stmt("SELECT")))
    assert d.action == "block"
    assert [r.id for r in d.rules] == ["allow-select", "block-delete"]
    # One statement no rule matches, under default block, blocks the message too.
    p = policy(tmp_path, COMBINE.format(default="block"))
    d = p.evaluate(ALICE, query(stmt("SELECT"), stmt("VACUUM", cls="misc")))
    assert d.action == "block"
    assert [r.id for r in d.rules] == ["allow-select", "default"]


def test_monitor_mode_records_would_be_blocks_as_flags(tmp_path: Path) -> None:
    p = one_rule(tmp_path, "commands: [DELETE]", "defaults:\n  mode: monitor\n")
    d = p.evaluate(ALICE, query(stmt("DELETE", cls="write")))
    assert (d.action, d.intended, d.mode) == ("flag", "block", "monitor")
    assert d.as_audit() == {
        "action": "flag",
        "intended": "block",
        "mode": "monitor",
        "rules": [{"id": "r", "action": "block", "severity": "medium"}],
    }
    assert d.reason.startswith("monitor mode, would block")
    d = p.evaluate(ALICE, query(stmt("SELECT")))
    assert (d.action, d.intended) == ("allow", "allow")


def test_unparsable_uses_on_unparsable_as_pseudo_rule(tmp_path: Path) -> None:
    p = policy(tmp_path, "rules: []\n")
    bad = QueryFacts("SELEC 1", (), parse_error='syntax error at or near "SELEC"')
    d = p.evaluate(ALICE, bad)
    assert (d.action, [r.id for r in d.rules], d.sqlstate) == ("block", ["unparsable"], "42601")
    assert "syntax error" in d.message
    p = policy(tmp_path, "defaults: {on_unparsable: flag}\n")
    scs = QueryFacts("x", (), unparsable_reason="standard_conforming_strings is off")
    d = p.evaluate(ALICE, scs)
    assert (d.action, d.rules[0].id, d.sqlstate) == ("flag", "unparsable", "42501")


def test_empty_query_is_allowed_even_under_default_block(tmp_path: Path) -> None:
    p = policy(tmp_path, "defaults: {action: block}\n")
    assert p.evaluate(ALICE, QueryFacts("", ())).action == "allow"


def test_unless_exempts_and_explain_reports_it(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="allow"))
    q = query(stmt("DELETE", cls="write", missing_where=True))
    e = p.explain(Identity("dba", "app"), q)
    assert e.decision.action == "allow"
    [trace] = e.traces
    assert (trace.rule.id, trace.when_holds, trace.exempted) == ("block-delete", True, True)
    assert "user 'dba' matches 'dba'" in trace.unless[0].why
    e = p.explain(ALICE, q)
    [trace] = e.matched
    assert trace.why == "commands: command DELETE matches 'DELETE'"


def test_decisions_stay_correct_across_cached_identities_and_commands(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="allow"))
    delete = query(stmt("DELETE", cls="write"))
    for _ in range(3):
        assert p.evaluate(ALICE, delete).action == "block"
        assert p.evaluate(Identity("dba", "app"), delete).action == "allow"
        assert p.evaluate(ALICE, query(stmt("SELECT"))).action == "allow"


# --- the cached fast path agrees with the full evaluation ----------------------------------

SHIPPED = Path(__file__).resolve().parent.parent / "policies"
_COMMANDS = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE TABLE", "DROP TABLE", "COPY", "DO"]
_NAMES = ["customers", "orders", "Users", "payments", "pg_authid"]
_SCHEMAS = [None, "public", "billing", "pg_catalog"]
_FUNCTIONS = ["now", "pg_read_file", "pg_catalog.pg_ls_dir", "lo_import", "set_config"]


@st.composite
def statements(draw: st.DrawFn) -> StatementFacts:
    relations = draw(
        st.lists(
            st.builds(
                Relation,
                st.sampled_from(_SCHEMAS),
                st.sampled_from(_NAMES),
                st.sampled_from(["read", "write"]),
            ),
            max_size=3,
        )
    )
    return stmt(
        draw(st.sampled_from(_COMMANDS)),
        cls=draw(st.sampled_from(["read", "write", "ddl", "role", "function", "misc"])),
        hidden=tuple(draw(st.lists(st.sampled_from(_COMMANDS), max_size=2))),
        hidden_classes=tuple(draw(st.lists(st.sampled_from(["write", "ddl"]), max_size=1))),
        relations=tuple(relations),
        functions=tuple(draw(st.lists(st.sampled_from(_FUNCTIONS), max_size=2))),
        missing_where=draw(st.booleans()),
        copy=draw(st.sampled_from([None, "program", "file", "stdin", "stdout"])),
        role_change=draw(st.booleans()),
        opaque=draw(st.booleans()),
    )


_POLICIES = [
    load_policy(
        [SHIPPED / "default.yaml"]
        + [SHIPPED / "examples" / f"{n}.yaml" for n in ("pii-tables", "read-only-analysts")]
        + [SHIPPED / "examples" / "business-hours.yaml"]
    ),
    load_policy([SHIPPED / "examples" / "strict-allow-list.yaml"]),
]


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from([0, 1]),
    user=st.sampled_from(["app", "postgres", "analyst_jo", "billing_svc", "reporter"]),
    application=st.sampled_from(["", "psql", "billing-service", "crm-web"]),
    stmts=st.lists(statements(), min_size=1, max_size=3),
    hour=st.integers(min_value=0, max_value=23),
)
def test_evaluate_matches_explain(
    which: int, user: str, application: str, stmts: list[StatementFacts], hour: int
) -> None:
    p = _POLICIES[which]
    who = Identity(user, "app", application, "127.0.0.1")
    now = datetime(2026, 3, 2, hour, 0, tzinfo=UTC)
    q = query(*stmts)
    first = p.evaluate(who, q, now)
    assert first == p.explain(who, q, now).decision
    assert p.evaluate(who, q, now) == first  # served from the caches this time


def test_caches_stay_bounded_and_correct_with_many_identities(tmp_path: Path) -> None:
    p = policy(tmp_path, COMBINE.format(default="allow"))
    delete = query(stmt("DELETE", cls="write"))
    for i in range(600):
        who = Identity(
            "dba" if i % 2 else f"user{i}", "app", client_addr=f"10.0.{i // 250}.{i % 250}"
        )
        assert p.evaluate(who, delete).action == ("allow" if i % 2 else "block")
    # Internal bound: old identities are evicted rather than kept forever.
    assert len(p._candidates) <= 256


def test_gate_decides_hours_on_the_current_time(tmp_path: Path) -> None:
    # Gate.decide reads the clock only for a policy that looks at it; one that does must see
    # the real time: a window around now blocks, the window twelve hours away does not.
    hour = datetime.now(UTC).hour
    around = f"{(hour - 1) % 24:02d}:00-{(hour + 2) % 24:02d}:00"
    away = f"{(hour + 11) % 24:02d}:00-{(hour + 13) % 24:02d}:00"
    facts = query(stmt())
    for window, expected in ((around, "block"), (away, "allow")):
        gate = Gate(config.defaults(), one_rule(tmp_path, f'hours: ["{window}"]'))
        assert gate.policy is not None and gate.policy.uses_time
        assert gate.decide(ALICE, facts).action == expected, window
    untimed = Gate(config.defaults(), one_rule(tmp_path, "commands: [SELECT]"))
    assert untimed.policy is not None and not untimed.policy.uses_time
    assert untimed.decide(ALICE, facts).action == "block"
