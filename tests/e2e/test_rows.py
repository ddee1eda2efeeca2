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
