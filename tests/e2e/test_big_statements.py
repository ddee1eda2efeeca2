"""Long statements are analysed off the event loop and still decided before they run
(issue 8 §4); beyond limits.max_analysis_size the policy's on_unparsable decides."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import unique, wait_events

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
defaults: {action: allow, on_unparsable: block}
rules:
  - id: no-unbounded-writes
    when: {commands: [DELETE, UPDATE], missing_where: true}
    action: block
"""


def _values(count: int) -> str:
    return ",".join(f"({i}, '{'v' * 20}')" for i in range(count))


def test_long_statement_runs_and_others_keep_being_served(
    proxy_factory: Any, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    proxy = proxy_factory(policies=[policy])
    table = unique("bigins")
    app = unique("bigapp")
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name=app) as conn:
        conn.execute(f"create table {table} (id int, v text)")
        done = threading.Event()
        served: list[int] = []

        def others() -> None:
            with psycopg.connect(proxy.dsn(), autocommit=True) as other:
                while not done.is_set():
                    other.execute("select 1")
                    served.append(1)

        thread = threading.Thread(target=others)
        thread.start()
        try:
            conn.execute(f"insert into {table} values {_values(20000)}")  # ~600 KB
        finally:
            done.set()
            thread.join(10)
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row == (20000,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"delete from {table} /* {'x' * 100_000} */")
        conn.execute(f"drop table {table}")
    assert served  # the other session was answered meanwhile
    inserts = wait_events(proxy, 1, "query", application_name=app, command_tag="INSERT 0 20000")
    assert inserts[0]["decision"]["action"] == "allow"


def test_statement_beyond_the_analysis_limit_is_decided_by_on_unparsable(
    proxy_factory: Any, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    proxy = proxy_factory("--limits-max-analysis-size", "100KB", policies=[policy])
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"select '{'x' * 200_000}'")


def test_analysis_over_the_worker_memory_limit_is_decided_by_on_unparsable(
    proxy_factory: Any, tmp_path: Path
) -> None:
    """The worker that hits limits.analysis_worker_memory is replaced; the statement is
    refused (on_unparsable: block) with the reason in its record, and the next one runs."""
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    proxy = proxy_factory(
        "--limits-analysis-worker-memory", "150MB", "--limits-analysis-offload-size", "1kB",
        policies=[policy],
    )  # fmt: skip
    app = unique("oomapp")
    greedy = "select " + ",".join(["1"] * 100_000)  # ~200 kB, ~0.27 GB to analyse
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name=app) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(greedy)
        # offloaded too (over 1 kB), to a fresh worker
        row = conn.execute(f"select 2 /* {'y' * 2000} */").fetchone()
        assert row == (2,)
    refused = wait_events(proxy, 1, "query", application_name=app, sqlstate="42501")
    assert "limits.analysis_worker_memory" in refused[0]["error"], refused[0]
    assert refused[0]["decision"]["rules"][0]["id"] == "unparsable"
