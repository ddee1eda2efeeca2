"""auth.passfile: libpq's .pgpass format, matched as libpq matches it."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth import passfile
from proxy.errors import ConfigError

TEXT = """\
# comment
db.example.org:5432:app:alice:first
*:*:*:alice:second
*:5432:*:b\\:ob:pa\\:ss\\\\word
"""


def test_first_matching_line_wins_and_wildcards_match_anything() -> None:
    pf = passfile.parse(TEXT, "pgpass")
    assert pf.password("db.example.org", 5432, "app", "alice") == "first"
    assert pf.password("db.example.org", 5432, "other", "alice") == "second"
    assert pf.password("10.0.0.1", 6543, "x", "alice") == "second"
    assert pf.password("db.example.org", 5432, "app", "carol") is None


def test_escaped_colons_and_backslashes() -> None:
    pf = passfile.parse(TEXT, "pgpass")
    assert pf.password("h", 5432, "d", "b:ob") == "pa:ss\\word"


def test_a_line_with_too_few_fields_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        passfile.parse("host:5432:db:user\n", "pgpass")
    assert info.value.problems[0].line == 1


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pgpass"
    path.write_text(TEXT)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="accessible by other users"):
        passfile.load(str(path))
    path.chmod(0o600)
    assert len(passfile.load(str(path)).entries) == 3
