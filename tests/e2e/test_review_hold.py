"""Human-in-the-loop: a `review` rule holds one statement inside the user's live session until
another person decides (issue 12). The client waits with notices; approval runs the statement
unchanged; denial, timeout and cancel answer an error and keep client and server in the same
transaction state, as blocking does."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.approvals.people import token_hash
from tests.e2e.kit import admin, policy_proxy, scratch_table, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
groups:
  dba: [bob, carol]
defaults: {action: allow, on_unparsable: block}
rules:
  - id: review-deletes
    when: {commands: [DELETE]}
    action: review
    message: Deletes need a second pair of eyes.
    review: {approvers: {groups: [dba]}, timeout: 20s}
  - id: review-truncate-twice
    when: {commands: ["TRUNCATE TABLE"]}
    action: review
    review: {approvers: {groups: [dba]}, approvals: 2, timeout: 3s}
  - id: review-updates-twice
    when: {commands: [UPDATE]}
    action: review
    review: {approvers: {groups: [dba]}, approvals: 2, timeout: 30s}
"""
TOKENS = {name: f"pgw_{name}-token-0123456789abcdef" for name in ("bob", "carol", "postgres")}


@pytest.fixture(scope="module")
def reviewed(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("review")
    people = tmp / "approvers.yaml"
    lines = ["version: 1", "people:"]
    for name, token in TOKENS.items():
        lines += [f"  - name: {name}", f"    token_sha256: {token_hash(token)}"]
        (tmp / f"{name}.token").write_text(token)
    people.write_text("\n".join(lines) + "\n")
    with policy_proxy(pg, tmp, POLICY, "--approvals-approvers-file", str(people)) as proxy:
        yield proxy


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    with scratch_table(pg, "held", 3) as name:
        yield name


def _vote(
    proxy: Any, who: str, verb: str, request_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    token = Path(proxy.workdir).parent / f"{who}.token"
    return subprocess.run(
        [
            sys.executable, "-m", "proxy", "approvals", verb, request_id,
            "--admin-url", proxy.admin_url(""), "--token-file", str(token), *extra,
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _pending(proxy: Any, rule: str, seen: int = 0) -> str:
    requests = wait_until(
        lambda: [e for e in proxy.events("review_requested") if e["rule"] == rule][seen:] or None,
        15,
        f"a review request of {rule}",
    )
    return str(requests[0]["request_id"])


def _requests(proxy: Any, rule: str = "review-deletes") -> int:
    return len([e for e in proxy.events("review_requested") if e["rule"] == rule])


def _count(pg: Any, table: str) -> int:
    with admin(pg) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_approved_statement_runs_and_its_result_is_relayed(
    reviewed: Any, pg: Any, table: str
) -> None:
    notices: list[str] = []
    with psycopg.connect(reviewed.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        seen = len(
            [e for e in reviewed.events("review_requested") if e["rule"] == "review-deletes"]
        )
        thread, out = _in_thread(lambda: conn.execute(f"delete from {table} where id = 1").rowcount)
        request_id = _pending(reviewed, "review-deletes", seen)
        assert _count(pg, table) == 3  # not forwarded while it waits
        refused = _vote(reviewed, "postgres", "approve", request_id)
        assert refused.returncode != 0  # the requester never approves their own statement
        assert _vote(reviewed, "bob", "approve", request_id).returncode == 0
        thread.join(20)
        assert out == [1]
        assert any(request_id in n for n in notices), notices
    assert _count(pg, table) == 2
    ran = [e for e in reviewed.events("query") if e.get("review_request") == request_id]
    assert ran and ran[0]["command_tag"] == "DELETE 1"


def test_denied_statement_gets_the_reason_and_the_session_stays_usable(
    reviewed: Any, pg: Any, table: str
) -> None:
    with psycopg.connect(reviewed.dsn(), autocommit=True) as conn:
        seen = len(
            [e for e in reviewed.events("review_requested") if e["rule"] == "review-deletes"]
        )
        thread, out = _in_thread(lambda: conn.execute(f"delete from {table}"))
        request_id = _pending(reviewed, "review-deletes", seen)
        assert _vote(reviewed, "carol", "deny", request_id, "--reason", "not today").returncode == 0
        thread.join(20)
        assert isinstance(out[0], psycopg.errors.InsufficientPrivilege)
        assert "not today" in str(out[0])
        assert conn.execute("select 42").fetchone() == (42,)
    assert _count(pg, table) == 3


def test_timeout_inside_a_transaction_aborts_it_like_a_block(
    reviewed: Any, pg: Any, table: str
) -> None:
    with psycopg.connect(reviewed.dsn()) as conn:  # a transaction block
        conn.execute(f"insert into {table} values (9)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not approved within"):
            conn.execute(f"truncate {table}")  # needs two approvals, gets none in 3 s
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
    assert _count(pg, table) == 3


def test_cancel_while_waiting_withdraws_the_request(reviewed: Any, pg: Any, table: str) -> None:
    with psycopg.connect(reviewed.dsn(), autocommit=True) as conn:
        seen = len(
            [e for e in reviewed.events("review_requested") if e["rule"] == "review-deletes"]
        )
        thread, out = _in_thread(lambda: conn.execute(f"delete from {table} where id = 2"))
        request_id = _pending(reviewed, "review-deletes", seen)
        conn.cancel_safe(timeout=5)
        thread.join(20)
        assert isinstance(out[0], psycopg.errors.QueryCanceled)
        assert conn.execute("select 1").fetchone() == (1,)
    withdrawn = wait_until(
        lambda: [e for e in reviewed.events("review_withdrawn") if e["request_id"] == request_id],
        10,
        "review_withdrawn",
    )
    assert withdrawn
    assert _count(pg, table) == 3


def test_a_review_mid_pipeline_holds_what_follows(reviewed: Any, pg: Any, table: str) -> None:
    with rawpg.RawConn(reviewed.host, reviewed.port, timeout=20) as conn:
        conn.login()
        seen = len(
            [e for e in reviewed.events("review_requested") if e["rule"] == "review-deletes"]
        )
        conn.send(
            rawpg.parse(f"delete from {table} where id = 3"), rawpg.bind(), rawpg.execute(),
            rawpg.parse(f"insert into {table} values (7)"), rawpg.bind(), rawpg.execute(),
            rawpg.sync(),
        )  # fmt: skip
        request_id = _pending(reviewed, "review-deletes", seen)
        assert _count(pg, table) == 3  # nothing after the held statement ran either
        assert _vote(reviewed, "bob", "deny", request_id, "--reason", "no").returncode == 0
        replies = conn.recv_until("Z")
        codes = [m.fields()["C"] for m in replies if m.type == "E"]
        assert codes == ["42501"]  # errors-until-Sync: the INSERT never ran
        assert replies[-1].status == "I"
    assert _count(pg, table) == 3


def test_a_two_approval_rule_needs_two_different_approvers(
    reviewed: Any, pg: Any, table: str
) -> None:
    with psycopg.connect(reviewed.dsn(), autocommit=True) as conn:
        seen = _requests(reviewed, "review-updates-twice")
        thread, out = _in_thread(
            lambda: conn.execute(f"update {table} set id = id + 10 where id = 1").rowcount
        )
        request_id = _pending(reviewed, "review-updates-twice", seen)
        assert _vote(reviewed, "bob", "approve", request_id).returncode == 0
        assert _vote(reviewed, "bob", "approve", request_id).returncode != 0  # once per person
        thread.join(1)
        assert thread.is_alive()  # one approval of two: still waiting
        assert _vote(reviewed, "carol", "approve", request_id).returncode == 0
        thread.join(20)
        assert out == [1]
    with admin(pg) as check:
        assert check.execute(f"select count(*) from {table} where id = 11").fetchone() == (1,)


@pytest.mark.parametrize(("setting", "warned"), [("15s", True), ("0", False)])
def test_a_hold_inside_begin_warns_when_the_servers_idle_timeout_is_shorter(
    reviewed: Any, pg: Any, table: str, setting: str, warned: bool
) -> None:
    """The session's real idle_in_transaction_session_timeout (set inside the transaction,
    so only the server knows it) is asked of the server while the statement is held."""
    notices: list[str] = []
    with psycopg.connect(reviewed.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("begin")
        conn.execute(f"set local idle_in_transaction_session_timeout = '{setting}'")
        seen = _requests(reviewed)
        thread, out = _in_thread(lambda: conn.execute(f"delete from {table} where id = 1"))
        request_id = _pending(reviewed, "review-deletes", seen)
        wait_until(lambda: notices or None, 10, "the waiting notice")
        assert _vote(reviewed, "bob", "deny", request_id, "--reason", "no").returncode == 0
        thread.join(20)
        assert isinstance(out[0], psycopg.errors.InsufficientPrivilege)
        assert conn.info.transaction_status.name == "INERROR"  # as after a block
        conn.execute("rollback")
    warning = "idle_in_transaction_session_timeout (15s) is shorter than the review timeout"
    assert (warning in notices[0]) is warned, notices[0]
    assert _count(pg, table) == 3
