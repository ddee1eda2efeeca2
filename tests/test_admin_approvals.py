"""Approvals through the admin API and `pgwarden approvals`: personal tokens, refusals with
their reasons, and the broker's outcome seen by the waiting side."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import config
from proxy.admin.app import AdminServer
from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.people import load_people, token_hash
from proxy.cli import main
from proxy.errors import ApproversFileError
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec
from proxy.state import ServerState

ADMIN = "admin-token-0123456789"
TOKENS = {
    name: f"pgw_{name}-token-0123456789" for name in ("alice", "bob", "carol", "dave", "vera")
}
SPEC = ReviewSpec(
    rule_id="review-deletes",
    users=frozenset({"carol"}),
    groups=(("dba", frozenset({"alice", "bob"})),),
    approvals=2,
    break_glass=(("oncall", frozenset({"dave"})),),
    source="p.yaml:8",
)
ALICE = Identity("alice", "app", "psql", "127.0.0.1", 50000, "s-1")


def people_file(tmp_path: Path) -> Path:
    path = tmp_path / "approvers.yaml"
    lines = ["version: 1", "people:"]
    for name, token in TOKENS.items():
        lines += [f"  - name: {name}", f"    token_sha256: {token_hash(token)}"]
        if name == "vera":
            lines.append("    role: viewer")
    path.write_text("\n".join(lines) + "\n")
    return path


class FakeTrail:
    healthy = True
    stats: Any = None

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def pending(self) -> int:
        return 0

    def add_listener(self, fn: Any) -> None:
        pass


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[ApprovalBroker, FakeTrail, str]]:
    (tmp_path / "admin-token").write_text(ADMIN)
    cfg = config.defaults().replace(
        admin__listen="127.0.0.1:0",
        admin__token_file=str(tmp_path / "admin-token"),
        approvals__approvers_file=str(people_file(tmp_path)),
        audit__dir=str(tmp_path / "a"),
    )
    trail = FakeTrail()
    state = ServerState(proxy_id="p", started_at=0.0)
    broker = ApprovalBroker("p", trail.submit, console_url="http://console.example")
    state.approvals = broker
    server = AdminServer(cfg, state, trail)  # type: ignore[arg-type]
    await server.start()
    try:
        yield broker, trail, f"http://127.0.0.1:{server.port}"
    finally:
        await server.aclose()


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.get(name, ADMIN)}"}


def test_deciding_needs_a_person_and_refusals_say_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as (broker, trail, base), aiohttp.ClientSession() as http:
            request = broker.request(
                SPEC, text="DELETE FROM t", identity=ALICE, statement="DELETE FROM t"
            )
            waiter = asyncio.ensure_future(broker.wait(request.id))
            url = f"{base}/approvals/{request.id}"

            async def post(
                verb: str, who: str | None, body: Any = None, **kw: Any
            ) -> tuple[int, Any]:
                headers = auth(who) if who else {}
                async with http.post(f"{url}/{verb}", json=body or {}, headers=headers, **kw) as r:
                    return r.status, await r.json()

            # Reading: the admin token or any person's token; nothing else.
            async with http.get(f"{base}/approvals") as r:
                assert r.status == 401
            async with http.get(f"{base}/approvals?state=pending", headers=auth("admin")) as r:
                [item] = await r.json()
                assert (item["id"], item["requester"], item["approvals_needed"]) == (
                    request.id,
                    "alice",
                    2,
                )
                assert item["link"] == f"http://console.example/console/reviews/{request.id}"
            # Deciding: a person. The admin token is nobody.
            assert await post("approve", "admin") == (401, {"error": (
                "deciding needs your personal token from the approvers file "
                "(Authorization: Bearer …)"
            )})  # fmt: skip
            assert await post("approve", "alice") == (403, {"error": (
                "alice asked for this statement; someone else must decide it (the requester "
                "never counts as an approver)"
            )})  # fmt: skip
            assert await post("approve", "dave") == (403, {"error": (
                "dave may not decide requests of rule review-deletes (approvers: group dba, carol)"
            )})  # fmt: skip
            assert await post("approve", "vera") == (
                403,
                {"error": "vera may view requests but not decide them"},
            )
            # A cross-site form post cannot decide anything.
            async with http.post(
                f"{url}/approve",
                data="reason=x",
                headers={**auth("bob"), "Content-Type": "text/plain"},
            ) as r:
                assert r.status == 415
            status, body = await post("approve", "bob", {"reason": "checked"})
            assert (status, body["state"], body["approvals"]) == (200, "pending", 1)
            assert (await post("approve", "bob"))[0] == 409
            status, body = await post("approve", "carol")
            assert (status, body["state"]) == (200, "approved")
            outcome = await asyncio.wait_for(waiter, 2)
            assert outcome.forward
            assert [v["approver"] for v in body["votes"]] == ["bob", "carol"]
            reviews = [e["type"] for e in trail.events if e["type"].startswith("review_")]
            assert reviews == ["review_requested", "review_decided", "review_decided"]
            # Every call is an `admin` event with its caller; refusals with the reason.
            admin = [(e["action"], e["caller"], e.get("result")) for e in trail.events
                     if e["type"] == "admin"]  # fmt: skip
            assert admin == [
                ("approvals_read", "admin-token", None),
                ("approve", "alice", "refused"),
                ("approve", "dave", "refused"),
                ("approve", "vera", "refused"),
                ("approve", "bob", "ok"),
                ("approve", "bob", "refused"),
                ("approve", "carol", "ok"),
            ]
            selfie = next(e for e in trail.events if e.get("caller") == "alice")
            assert selfie["request_id"] == request.id
            assert selfie["reason"].startswith("alice asked for this statement")
            # An unknown token is a failed authentication, rate-limited per address.
            for _ in range(10):
                wrong = {"Authorization": "Bearer pgw_not-anybody-0123456789"}
                async with http.get(f"{base}/approvals", headers=wrong) as r:
                    assert r.status == 401
            async with http.get(f"{base}/approvals", headers=auth("bob")) as r:
                assert r.status == 429  # even the right token, for a while

    asyncio.run(scenario())


def test_the_cli_lists_shows_approves_and_denies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as (broker, _trail, base):
            loop = asyncio.get_running_loop()

            async def cli(*argv: str, who: str = "bob") -> int:
                (tmp_path / "tok").write_text(TOKENS.get(who, ADMIN))
                flags = ["--admin-url", base, "--token-file", str(tmp_path / "tok")]
                return int(await loop.run_in_executor(None, main, ["approvals", *argv, *flags]))

            one = broker.request(
                SPEC, text="DELETE FROM t", identity=ALICE, statement="DELETE FROM t"
            )
            two = broker.request(
                SPEC, text="DELETE FROM u", identity=ALICE, statement="DELETE FROM u"
            )
            assert await cli("list") == 0
            out = capsys.readouterr().out.splitlines()
            assert out[0].split() == ["ID", "STATE", "RULE", "USER", "DB", "OK", "STATEMENT"]
            assert [line.split()[0] for line in out[1:]] == [two.id, one.id]
            assert out[1].split()[1:] == [
                "pending",
                "review-deletes",
                "alice",
                "app",
                "0/2",
                "DELETE",
                "FROM",
                "u",
            ]
            assert await cli("approve", one.id, "--reason", "fine") == 0
            assert (
                capsys.readouterr().out == f"approved {one.id}: 1 of 2 approvals, still pending\n"
            )
            assert await cli("approve", one.id, who="alice") == 1
            assert capsys.readouterr().err == (
                "pgwarden: refused (403): alice asked for this statement; someone else must decide "
                "it (the requester never counts as an approver)\n"
            )
            assert await cli("deny", one.id, "--reason", "not today", who="carol") == 0
            assert capsys.readouterr().out == f"denied {one.id}: request is now denied\n"
            assert (
                await cli("approve", two.id, "--break-glass", "--reason", "outage", who="dave") == 0
            )
            assert capsys.readouterr().out == f"approved {two.id}: request is now approved\n"
            assert await cli("show", one.id, who="admin") == 0
            shown = capsys.readouterr().out
            assert f"request    {one.id}  (denied)" in shown
            assert (
                "vote       " in shown
                and "bob approve: fine" in shown
                and "carol deny: not today" in shown
            )
            assert "ended      " in shown and ": not today" in shown
            assert await cli("list", "--state", "all") == 0
            assert "approved" in capsys.readouterr().out
            assert await cli("show", "r-missing") == 1
            assert (
                capsys.readouterr().err
                == "pgwarden: refused (404): no approval request 'r-missing'\n"
            )

    asyncio.run(scenario())
    assert main(["approvals", "list", "--admin-url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the admin API at http://127.0.0.1:9" in capsys.readouterr().err


def test_new_token_makes_a_working_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["approvals", "new-token", "erin", "--groups", "dba, oncall"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0].rpartition(": ")[2]
    path = tmp_path / "people.yaml"
    path.write_text("people:\n" + "\n".join(out[2:]) + "\n")
    person = load_people(path).by_token(token)
    assert person is not None
    assert (person.name, person.groups, person.role) == (
        "erin",
        frozenset({"dba", "oncall"}),
        "approver",
    )
    assert load_people(path).by_token(token + "x") is None


def test_approvers_file_problems_are_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        people:
          - name: bob
            token_sha256: nothex
          - name: bob
            token_sha256: {"a" * 64}
            role: boss
          - name: carol
            token_sha256: {"a" * 64}
            colour: red
        """)
    )
    with pytest.raises(ApproversFileError) as info:
        load_people(path)
    assert [str(p).removeprefix(f"{path}:") for p in info.value.problems] == [
        "3:5: people[bob]: token_sha256 must be 64 lowercase hex digits "
        "(pgwarden approvals new-token)",
        "6:5: people[bob].role: 'boss' is not one of approver, viewer",
        "9:5: people[carol]: unknown person key 'colour' (known: name, token_sha256, groups, role, "
        "password)",
    ]


def test_console_store_needs_a_store_sink(tmp_path: Path) -> None:
    from proxy.errors import ConfigError

    cfg = config.defaults().replace(
        admin__listen="127.0.0.1:0", console__store=True, audit__dir=str(tmp_path)
    )
    with pytest.raises(ConfigError) as info:
        AdminServer(cfg, ServerState(proxy_id="p", started_at=0.0), FakeTrail())  # type: ignore[arg-type]
    assert str(info.value) == "console.store: console.store needs a store in audit.sinks"


def test_check_config_reads_the_approvers_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["serve", "--check-config", "--audit-dir", str(tmp_path / "audit")]
    good = people_file(tmp_path)
    assert main([*flags, "--approvals-approvers-file", str(good)]) == 0
    assert "# 5 people in the approvers file" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("people:\n  - name: bob\n    token_sha256: nothex\n")
    assert main([*flags, "--approvals-approvers-file", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"pgwarden: {bad}:3:5: people[bob]: token_sha256 must be 64 lowercase hex digits "
        "(pgwarden approvals new-token)\n"
    )
