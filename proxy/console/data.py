"""What the console reads from the local audit trail: the same selection as ``pgwarden logs``.

Search parameters arrive as form fields named like the ``logs`` flags (``user``, ``table``,
``min-duration``…); they are turned into those flags and parsed by the very parser ``logs``
uses (:func:`proxy.audit.filters.add_filter_arguments`), so the console accepts and refuses
exactly what the CLI does. Everything here is blocking file I/O: the console runs it in a
worker thread, never on the proxy's event loop.
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.filters import EventFilter, add_filter_arguments
from proxy.audit.reader import iter_raw
from proxy.review.report import Report, ReportBuilder
from proxy.review.source import select_events

PAGE = 50
# Form field -> `pgwarden logs` flag; repeatable ones accept comma-separated values.
FIELDS = (
    ("user", "--user", True),
    ("database", "--database", True),
    ("application", "--application", True),
    ("identity", "--identity", True),
    ("client", "--client", True),
    ("session", "--session", True),
    ("command", "--command", True),
    ("table", "--table", True),
    ("action", "--action", True),
    ("rule", "--rule", True),
    ("sqlstate", "--sqlstate", True),
    ("type", "--type", True),
    ("min-duration", "--min-duration", False),
    ("grep", "--grep", False),
    ("since", "--since", False),
    ("until", "--until", False),
)


class FilterError(ValueError):
    """A search field the ``logs`` parser refuses (the message says which and why)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit
        raise FilterError(message)


def _parser() -> _Parser:
    parser = _Parser(prog="console", add_help=False)
    add_filter_arguments(parser)
    return parser


def filter_from_form(form: Mapping[str, str]) -> EventFilter:
    argv: list[str] = []
    for name, flag, repeat in FIELDS:
        value = (form.get(name) or "").strip()
        if not value:
            continue
        values = [v.strip() for v in value.split(",") if v.strip()] if repeat else [value]
        for item in values:
            argv += [flag, item]
    if form.get("errors"):
        argv.append("--errors")
    return EventFilter.from_args(_parser().parse_args(argv))


@dataclass(frozen=True, slots=True)
class Page:
    events: tuple[dict[str, Any], ...]  # newest first
    page: int
    more: bool  # older matches exist beyond this page


class TrailReader:
    """Reads the local trail in ``directory``, or with ``store`` (dsn, schema) the central
    store, where the events of every proxy shipping into it are."""

    def __init__(self, directory: str | Path, store: tuple[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.store = store

    def _exists(self) -> bool:
        return self.store is not None or self.directory.is_dir()

    def _select(self, selection: EventFilter) -> Iterator[dict[str, Any]]:
        if self.store is None:
            return select_events(self.directory, selection)
        from proxy.store.query import iter_store_events

        dsn, schema = self.store
        return iter_store_events(
            dsn, selection, since=selection.since, until=selection.until, schema=schema
        )

    def search(self, selection: EventFilter, page: int = 0, size: int = PAGE) -> Page:
        """One page of matches, newest first (the trail is read once, keeping the newest
        ``(page + 1) * size + 1`` matches)."""
        if not self._exists():
            return Page((), page, False)
        keep = (page + 1) * size + 1
        newest: deque[dict[str, Any]] = deque(self._select(selection), keep)
        ordered = list(reversed(newest))
        chunk = ordered[page * size : (page + 1) * size]
        return Page(tuple(chunk), page, len(ordered) > (page + 1) * size)

    def event(self, seq: int, proxy_id: str = "", ts: str = "") -> dict[str, Any] | None:
        """The event with this seq (and, in the store, of this proxy). ``ts`` tells apart
        the events of one seq in several trails (workers, or proxies sharing a proxy_id)."""
        if not self._exists():
            return None
        if self.store is not None:
            return next(
                (e for e in self._select(EventFilter())
                 if e.get("seq") == seq and (not proxy_id or e.get("proxy_id") == proxy_id)
                 and (not ts or e.get("ts") == ts)),
                None,
            )  # fmt: skip
        needles = (f'"seq":{seq},'.encode(), f'"seq":{seq}}}'.encode())
        for raw in iter_raw(self.directory):
            if needles[0] in raw or needles[1] in raw:
                try:
                    event = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if (
                    isinstance(event, dict)
                    and event.get("seq") == seq
                    and (not ts or event.get("ts") == ts)
                ):
                    return event
        return None

    def session(self, session_id: str) -> list[dict[str, Any]]:
        """Every event of one session, in trail order (start, statements, reviews, end)."""
        if not self._exists():
            return []
        selection = EventFilter(session=(session_id,))
        return [e for e in self._select(selection) if e.get("session_id")]

    def similar(self, fingerprint: str, limit: int = 10) -> list[dict[str, Any]]:
        """The newest statements of the same shape (fingerprint), for reviewers."""
        if not fingerprint or not self._exists():
            return []
        same = (e for e in self._select(EventFilter(types=("query",)))
                if e.get("fingerprint") == fingerprint)  # fmt: skip
        return list(reversed(deque(same, limit)))

    def overview(self, hours: float, now: datetime | None = None) -> Report:
        since = (now or datetime.now(UTC)) - timedelta(hours=hours)
        selection = EventFilter(since=since)
        builder = ReportBuilder(top=10)
        if self._exists():
            builder.add_all(self._select(selection))
        return builder.build(since=since, until=None, filters=())


def with_page(form: Mapping[str, str], page: int) -> dict[str, str]:
    """The search form's fields with another page number (for "older" / "newer" links)."""
    out = {k: v for k, v in form.items() if k != "page" and v}
    out["page"] = str(page)
    return out


def searched(form: Mapping[str, str]) -> bool:
    return any((form.get(name) or "").strip() for name, _f, _r in FIELDS) or bool(
        form.get("errors")
    )
