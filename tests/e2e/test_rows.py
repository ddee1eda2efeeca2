"""``rows`` counts DataRows for every statement that returns them (issue 9 §4)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.kit import unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def test_rows_of_show_explain_and_call(proxy: Any) -> None:
    app = unique("rows")
    proc = unique("outp")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        conn.simple(
            f"create procedure {proc}(inout a int, inout b int) language sql as $$ select 1, 2 $$"
        )
        conn.simple("show work_mem")
        conn.simple("explain select * from pg_class")
        conn.simple(f"call {proc}(null, null)")
        conn.simple(f"drop procedure {proc}")
    events = wait_events(proxy, 5, "query", application_name=app)
    rows = {e["statement"].split()[0].lower(): e["rows"] for e in events}
    assert rows["show"] == 1
    assert rows["explain"] is not None and rows["explain"] >= 1
    assert rows["call"] == 1


def test_application_name_set_after_connecting_names_later_records(proxy: Any) -> None:
    """pgjdbc sets application_name with a SET right after connecting: the records after it
    carry the new name (docs/audit-log.md: identity fields at the time of the event)."""
    first = unique("before")
    later = unique("after")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": first})
        conn.simple(f"set application_name = '{later}'")
        conn.simple("select 1")
    start = wait_events(proxy, 1, "session_start", application_name=first)
    assert start
    [query] = [
        e
        for e in wait_events(proxy, 1, "query", application_name=later)
        if e["statement"] == "select 1"
    ]
    assert query["session_id"] == start[0]["session_id"]


def test_logs_rule_finds_the_statement_of_a_message_that_matched(
    proxy_factory: Any, tmp_path: Any
) -> None:
    import json
    import subprocess
    import sys

    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\ndefaults: {action: allow}\nrules:\n"
        "  - id: flag-drops\n    when: {commands: ['DROP TABLE']}\n    action: flag\n"
    )
    proxy = proxy_factory(policies=[policy])
    app = unique("perstmt")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        conn.simple("select 1; drop table if exists pgw_no_such_table; select 2")
    wait_events(proxy, 3, "query", application_name=app)
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "logs", str(proxy.audit_dir), "--format", "json",
         "--rule", "flag-drops", "--app", app],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = [json.loads(line)["statement"] for line in out.stdout.splitlines()]
    assert found == ["drop table if exists pgw_no_such_table"]
