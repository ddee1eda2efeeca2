"""auth.ident_file: pg_ident.conf's format and meaning (PostgreSQL's documentation examples)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth import identmap
from proxy.errors import ConfigError

# The examples of PostgreSQL's "User Name Maps" chapter, and a few of pgwarden's.
EXAMPLE = r"""
# MAPNAME       SYSTEM-USERNAME         PG-USERNAME
omicron         bryanh                  bryanh
omicron         ann                     ann
# bob has user name robert on these machines
omicron         robert                  bob
# bryanh can also connect as guest1
omicron         bryanh                  guest1
mymap   /^(.*)@mydomain\.com$      \1
mymap   /^(.*)@otherdomain\.com$   guest
admins  "CN=Ops Team"  all
admins  ci-bot  /^app_
quoted  "/not-a-regex"  "all"
"""


@pytest.mark.parametrize(
    ("map_name", "identity", "role", "allowed"),
    [
        ("omicron", "bryanh", "bryanh", True),
        ("omicron", "bryanh", "guest1", True),
        ("omicron", "robert", "bob", True),
        ("omicron", "robert", "robert", False),
        ("omicron", "Bryanh", "bryanh", False),  # exact, case included
        ("mymap", "alice@mydomain.com", "alice", True),
        ("mymap", "alice@mydomain.com", "bob", False),
        ("mymap", "alice@mydomainXcom", "alice", False),  # the dot is escaped
        ("mymap", "alice@otherdomain.com", "guest", True),
        ("mymap", "alice@otherdomain.com", "alice", False),
        ("admins", "CN=Ops Team", "anything", True),
        ("admins", "ci-bot", "app_reader", True),
        ("admins", "ci-bot", "reader", False),
        ("quoted", "/not-a-regex", "all", True),  # quoted: literal, not a regex or keyword
        ("quoted", "/not-a-regex", "alice", False),
        ("omicron", "alice@mydomain.com", "alice", False),  # other maps' lines do not count
    ],
)
def test_documented_semantics(map_name: str, identity: str, role: str, allowed: bool) -> None:
    assert identmap.parse(EXAMPLE, "pg_ident.conf").allows(map_name, identity, role) is allowed


def test_problems_are_named_with_their_line() -> None:
    text = (
        "m  a\n"  # two fields
        "m  /(unclosed  x\n"
        "m  /^nogroup$  \\1\n"
        "m  alice  +admins\n"
        'm  "open  x\n'
        "include other.conf\n"
    )
    with pytest.raises(ConfigError) as err:
        identmap.parse(text, "ident")
    problems = [str(p) for p in err.value.problems]
    assert problems[0].startswith("ident:1: auth.ident_file: expected MAPNAME SYSTEM-USERNAME")
    assert "ident:2:" in problems[1] and "invalid regular expression" in problems[1]
    assert "ident:3:" in problems[2] and "has no subexpressions" in problems[2]
    assert "ident:4:" in problems[3] and "role membership" in problems[3]
    assert "ident:5:" in problems[4] and "unterminated" in problems[4]
    assert "ident:6:" in problems[5] and "include is not supported" in problems[5]


def test_the_configured_map_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "ident"
    path.write_text("ops alice alice\n")
    assert identmap.load(str(path), "ops").allows("ops", "alice", "alice")
    with pytest.raises(ConfigError, match='no line of the file is in map "opz"'):
        identmap.load(str(path), "opz")
    with pytest.raises(ConfigError, match="cannot read"):
        identmap.load(str(tmp_path / "missing"), "ops")
