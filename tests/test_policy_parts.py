"""Small parts of the policy engine: identifier patterns, hours specs, the file watcher."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.policy.hours import HoursError, parse_hours
from proxy.policy.names import PatternError, split_identifier
from proxy.policy.watch import PolicyWatcher


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("users", ["users"]),
        ("Users", ["users"]),
        ('"Users"', ["Users"]),
        ('Public."Users"', ["public", "Users"]),
        ('"a""b"', ['a"b']),
        ('U&"\\0075sers"', ["users"]),
        ('u&"d\\0061t\\+000061"', ["data"]),
        ('"with.dot".x', ["with.dot", "x"]),
        ("sch.*", ["sch", "*"]),
        (" a . b ", ["a", "b"]),
        ("ÉTÉ", ["ÉtÉ"]),  # only ASCII letters fold, as in PostgreSQL with UTF8
    ],
)
def test_split_identifier(text: str, parts: list[str]) -> None:
    assert split_identifier(text) == parts


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('"open', "unterminated quoted identifier"),
        ('""', "zero-length quoted identifier"),
        ("a.", "name ends with '.'"),
        ("", "empty name"),
        ("a b", "unexpected 'b' after identifier"),
        ('U&"\\zz"', "invalid Unicode escape"),
    ],
)
def test_split_identifier_errors(text: str, error: str) -> None:
    with pytest.raises(PatternError, match=error):
        split_identifier(text)


def test_hours_parsing_and_defaults() -> None:
    w = parse_hours("Mon-Fri 09:00-18:00 Europe/Berlin")
    assert (sorted(w.days), w.start, w.end, str(w.tz)) == (
        [0, 1, 2, 3, 4],
        540,
        1080,
        "Europe/Berlin",
    )
    w = parse_hours("Fri-Mon,Wed 00:00-24:00")
    assert (sorted(w.days), w.end, str(w.tz)) == ([0, 2, 4, 5, 6], 1440, "UTC")
    assert w.contains(datetime(2026, 7, 5, 23, 59, tzinfo=UTC))  # Sunday
    assert not w.contains(datetime(2026, 7, 7, 12, 0, tzinfo=UTC))  # Tuesday


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Mon-Fri", "has no time range"),
        ("Mon-Fry 09:00-10:00", "unknown day 'Fry'"),
        ("09:00-09:00", "empty time range"),
        ("9-17", "has no time range"),
        ("09:00-17:60", "bad time '17:60'"),
        ("09:00 17:00", "bad time range"),
        ("Mon Fri 09:00-17:00", "write days without spaces"),
        ("09:00-17:00 Nowhere/City", "unknown time zone"),
        ("09:00-17:00 UTC extra", "unexpected 'extra'"),
    ],
)
def test_hours_errors(text: str, error: str) -> None:
    with pytest.raises(HoursError, match=error):
        parse_hours(text)


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_watcher_sees_edits_replacements_and_new_directory_files(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("rules: []\n")
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    watcher = PolicyWatcher([policy, rules_d])
    assert not watcher.changed()
    policy.write_text("rules: []\n")  # same size: only the mtime tells
    _bump_mtime(policy)
    assert watcher.changed()
    assert not watcher.changed()  # reported once
    replacement = tmp_path / "new.yaml"
    replacement.write_text("rules: [] \n")
    replacement.replace(policy)  # editors save by rename
    assert watcher.changed()
    (rules_d / "extra.yaml").write_text("rules: []\n")
    assert watcher.changed()
    (rules_d / "README").write_text("not a rule file")
    assert not watcher.changed()
    policy.unlink()
    assert watcher.changed()
    assert not watcher.changed()
