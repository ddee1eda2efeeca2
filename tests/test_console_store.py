"""The console reads the central store (`console.store: true`) exactly as the local trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.audit.filters import EventFilter
from proxy.console.data import TrailReader, filter_from_form
from tests import report_trail as rt
from tests.test_report_store import store  # noqa: F401  (the store holding rt.scenario())

pytestmark = pytest.mark.e2e


def _key(events: Any) -> list[tuple[str, int]]:
    return [(e["proxy_id"], e["seq"]) for e in events]


def test_store_and_trail_give_the_same_pages(store: str, tmp_path: Path) -> None:  # noqa: F811
    files = TrailReader(rt.write_trail(tmp_path / "audit", rt.scenario()))
    central = TrailReader(tmp_path / "nowhere", (store, "public"))
    for form in ({"user": "bob"}, {"action": "block"}, {"min-duration": "50ms", "user": "carol"},
                 {"type": "query", "table": "nope"}):  # fmt: skip
        selection = filter_from_form(form)
        assert _key(central.search(selection).events) == _key(files.search(selection).events)
    page = central.search(EventFilter(user=("carol",)), page=1, size=20)
    assert len(page.events) == 20 and page.more
    assert _key(central.session("s2")) == _key(files.session("s2"))
    fingerprint = rt.fingerprint(rt.SQL_A)
    assert _key(central.similar(fingerprint)) == _key(files.similar(fingerprint))
    # In the store several proxies' seqs overlap: the proxy picks the one.
    first = {p: central.event(1, p) for p in ("pgw-1", "pgw-2")}
    assert {p: (e or {}).get("user") for p, e in first.items()} == {
        "pgw-1": "alice",
        "pgw-2": "carol",
    }
    assert central.event(3, "pgw-1") == files.event(3)
