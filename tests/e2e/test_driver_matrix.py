"""Driver matrix: real client drivers run the same scenario direct and through pgwarden.

psycopg2, pgjdbc and node-postgres each run prepared statements, a batch, a transaction,
LISTEN/NOTIFY and a cancel; those three plus psql, psycopg 3 and asyncpg also check the
backend identity (the pid the driver reports is ``pg_backend_pid()``) and that a cancel is
done when the driver is told so (the next statement is never the one cancelled). Every test
asserts what PostgreSQL does; through the proxy the result must be the same.

Both were wrong through pgwarden before issue 8 (it minted its own BackendKeyData and closed the
client's cancel socket before forwarding); these tests were strict xfails then and turned red
the moment the relay rebuild fixed them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import pgrun
from tests.e2e import drivers
from tests.e2e.kit import Target
from tests.support.proxyproc import ProxyFactory
from tests.support.slowlink import SlowCancelLink

pytestmark = pytest.mark.e2e

# How long the slow link holds a CancelRequest: twice the 0.3 s statement it is
# meant for, far shorter than the 1.5 s statement after it.
CANCEL_DELAY = 0.6

Runner = Callable[[str, Target, str], drivers.Result]


@pytest.fixture(scope="module")
def java_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("java")


@pytest.fixture
def run(request: pytest.FixtureRequest, java_workdir: Path) -> Runner:
    """The driver under test (the test's ``driver`` parameter) as ``run(scenario, target, app)``."""
    name: str = request.node.callspec.params["driver"]
    runners: dict[str, Runner] = {
        "psycopg2": drivers.run_psycopg2,
        "pgjdbc": functools.partial(_pgjdbc, workdir=java_workdir),
        "node-postgres": drivers.run_node_postgres,
        "psycopg3": drivers.run_psycopg3,
        "asyncpg": drivers.run_asyncpg,
        "psql": drivers.run_psql,
    }
    return runners[name]


def _pgjdbc(scenario: str, target: Target, app: str, *, workdir: Path) -> drivers.Result:
    return drivers.run_pgjdbc(scenario, target, app, workdir)


FULL = ["psycopg2", "pgjdbc", "node-postgres"]
ALL = [*FULL, "psql", "psycopg3", "asyncpg"]


@pytest.mark.parametrize("driver", ALL)
def test_backend_pid_is_the_servers(driver: str, run: Runner, target: Target) -> None:
    result = run("pid", target, drivers.app_name(driver, "pid"))
    assert result["driver_pid"] == result["server_pid"], result


@pytest.mark.parametrize("driver", FULL)
def test_prepared_statements(driver: str, run: Runner, target: Target) -> None:
    result = run("prepared", target, drivers.app_name(driver, "prepared"))
    assert result["values"] == [2, 4, 6], result
    assert result["server_prepared"] >= 1, f"nothing prepared on the server: {result}"


_BATCH_EXTRA: dict[str, dict[str, Any]] = {
    "psycopg2": {"rowcount": 3},
    "pgjdbc": {"update_counts": [1, 1, 1]},
    "node-postgres": {"commands": ["CREATE", "INSERT", "INSERT", "INSERT", "SELECT"]},
}


@pytest.mark.parametrize("driver", FULL)
def test_batch(driver: str, run: Runner, target: Target) -> None:
    result = run("batch", target, drivers.app_name(driver, "batch"))
    assert result == {"rows": "1a,2b,3c", **_BATCH_EXTRA[driver]}


@pytest.mark.parametrize("driver", FULL)
def test_transaction_savepoint_commit_rollback(driver: str, run: Runner, target: Target) -> None:
    result = run("transaction", target, drivers.app_name(driver, "transaction"))
    assert result == {"duplicate": "23505", "rows": "1,2"}


@pytest.mark.parametrize("driver", FULL)
def test_listen_notify(driver: str, run: Runner, target: Target) -> None:
    result = run("notify", target, drivers.app_name(driver, "notify"))
    assert [(n["channel"], n["payload"]) for n in result["notifications"]] == [("<ours>", "hello")]
    # NotificationResponse carries the notifying backend's real pid.
    assert result["notifications"][0]["pid"] == result["server_pid"], result


@pytest.mark.parametrize("driver", FULL)
def test_own_notify_recognised(driver: str, run: Runner, target: Target) -> None:
    """The usual "skip my own NOTIFY" check: notification pid == the driver's backend pid."""
    result = run("notify", target, drivers.app_name(driver, "ownnotify"))
    assert len(result["notifications"]) == 1, result
    assert result["notifications"][0]["pid"] == result["driver_pid"], result


@pytest.mark.parametrize("driver", FULL)
def test_cancel_then_next_statement(driver: str, run: Runner, target: Target) -> None:
    """A running pg_sleep is cancelled (57014) promptly; the next statement runs normally."""
    result = run("cancel", target, drivers.app_name(driver, "cancel"))
    assert (result["first"], result["next"]) == ("57014", "next"), result
    assert result["seconds"] < 3, f"the cancel took {result['seconds']:.1f}s"


# --- a cancel is done when the driver is told so ---------------------------------------


@pytest.fixture(scope="module")
def slow_link(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowCancelLink]:
    log = tmp_path_factory.mktemp("slowlink") / "cancels.log"
    link = SlowCancelLink(pg.host, pg.port, CANCEL_DELAY, log).start()
    try:
        yield link
    finally:
        link.stop()


@pytest.fixture(scope="module")
def slow_link_proxy(
    pg: Any, slow_link: SlowCancelLink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    factory = ProxyFactory(pg, tmp_path_factory.mktemp("slowproxy"))
    try:
        yield factory("--upstream", f"{slow_link.host}:{slow_link.port}")
    finally:
        factory.close()


@pytest.fixture(params=["direct", "proxy"])
def slow_target(request: pytest.FixtureRequest, pg: Any, slow_link: SlowCancelLink) -> Target:
    """PostgreSQL behind the slow link: directly, or with pgwarden between client and link."""
    if request.param == "direct":
        host, port, proxy = slow_link.host, slow_link.port, None
    else:
        proxy = request.getfixturevalue("slow_link_proxy")
        host, port = proxy.host, proxy.port
    dsn = functools.partial(pgrun.libpq_url, host, port)
    return Target(request.param, host, port, dsn, proxy, pg.superuser_password)


@pytest.mark.parametrize("driver", ALL)
def test_cancel_done_before_next_statement(
    driver: str,
    run: Runner,
    slow_target: Target,
    slow_link: SlowCancelLink,
) -> None:
    """The driver cancels a 0.3 s statement and, once told the cancel is done, runs the next.

    The link holds the cancel for 0.6 s, so the first statement ends on its own; a cancel the
    server acts on only after the driver was told "done" lands on the next statement instead.
    """
    relayed = slow_link.cancels_relayed
    result = run("cancel_then_next", slow_target, drivers.app_name(driver, "cancelnext"))
    assert result["next"] == "next", f"the next statement was cancelled: {result}"
    # asyncpg reports the task it cancelled; psql does not print a result it asked to cancel.
    assert result["first"] in ("ok", "task cancelled", "result not shown"), result
    assert slow_link.cancels_relayed > relayed, "no cancel reached the server"
