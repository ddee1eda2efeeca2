"""Finding statements by end identity: ``logs --identity``, the console's search field,
``report``'s by-identity table (JSON and text). The store's push-down is compared with the
files' answer in test_store.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from proxy import cli
from proxy.console.data import TrailReader, filter_from_form
from tests.test_logs import query, write


def with_identity(n: int, identity: str | None, source: str = "certificate") -> dict[str, Any]:
    extra: dict[str, Any] = {"user": "app", "session_id": f"s{n}"}
    if identity is not None:
        extra |= {"identity": identity, "identity_source": source}
    return query(n, **extra)


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    events = [
        with_identity(1, "CN=alice,O=Example"),
        with_identity(2, "bob", "client_supplied"),
        with_identity(3, None),
        with_identity(4, "CN=alice,O=Example"),
        with_identity(5, "alice", "client_supplied"),
    ]
    write(tmp_path, events)
    return tmp_path


def seqs(out: str) -> list[str]:
    return [json.loads(line)["session_id"] for line in out.splitlines()]


def test_logs_identity_exact_glob_and_any_of(
    audit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def logs(*flags: str) -> list[str]:
        assert cli.main(["logs", str(audit), "--format", "json", *flags]) == 0
        return seqs(capsys.readouterr().out)

    assert logs("--identity", "CN=alice,O=Example") == ["s1", "s4"]
    assert logs("--identity", "*alice*") == ["s1", "s4", "s5"]
    assert logs("--identity", "bob", "--identity", "alice") == ["s2", "s5"]
    assert logs("--identity", "*") == ["s1", "s2", "s4", "s5"]  # s3 has none
    assert logs("--identity", "nobody") == []


def test_console_search_has_an_identity_field(audit: Path) -> None:
    reader = TrailReader(audit)
    page = reader.search(filter_from_form({"identity": "bob, CN=alice*"}))
    assert sorted(e["session_id"] for e in page.events) == ["s1", "s2", "s4"]
    from proxy.console.data import FIELDS

    assert "identity" in [name for name, _flag, _repeat in FIELDS]


def test_report_counts_statements_per_identity_and_source(
    audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert cli.main(["report", str(audit), "--format", "json", "-o", str(out)]) == 0
    rows = {r["key"]: r["statements"] for r in json.loads(out.read_text())["by_identity"]}
    # The same name from a certificate and from the client are different rows.
    assert rows == {
        "CN=alice,O=Example (certificate)": 2,
        "bob (client_supplied)": 1,
        "alice (client_supplied)": 1,
    }
    assert cli.main(["report", str(audit), "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "By end identity" in text
    assert "CN=alice,O=Example (certificate)" in text
    assert cli.main(["report", str(audit), "--format", "json", "--identity", "bob"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["statements"] == 1


def test_an_approval_request_names_the_person_behind_the_role() -> None:
    asyncio.run(_approval_request())


async def _approval_request() -> None:
    from proxy.admin.approvals import request_json
    from proxy.approvals.broker import ApprovalBroker
    from proxy.identity import Identity, IdentitySource
    from proxy.policy.review import ReviewSpec

    spec = ReviewSpec("review-deletes", frozenset({"carol"}), (), approvals=1)
    broker = ApprovalBroker("p", lambda e: None, console_url="http://x")
    shared = Identity(
        "app", "app", "billing/bob", "10.0.0.9", 5000, "s-9",
        end_identity="bob", identity_source=IdentitySource.CLIENT_SUPPLIED,
    )  # fmt: skip
    request = broker.request(spec, text="DELETE FROM t", identity=shared, statement="DELETE")
    item = request_json(request)
    assert (item["requester"], item["identity"], item["identity_source"]) == (
        "app",
        "bob",
        "client_supplied",
    )
    plain = broker.request(
        spec, text="DELETE FROM u", identity=Identity("app", "app"), statement="DELETE"
    )
    assert (request_json(plain)["identity"], request_json(plain)["identity_source"]) == (None, None)
