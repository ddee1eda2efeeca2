"""Settings in a startup packet, read as the server reads them (postinit.c: the ``options``
switches first, by the backend's getopt, then every other key in order, the last winning)."""

from __future__ import annotations

import pytest

from proxy.relay.handshake import Login, read_login, startup_setting, without_settings
from proxy.wire.startup import StartupMessage

RESERVED = frozenset({"pgwarden.identity", "pgwarden.identity_source"})


def login(*params: tuple[str, str]) -> Login:
    return read_login(StartupMessage(3, 0, (("user", "app"), *params)))


def test_options_are_read_first_and_keys_override_them() -> None:
    params = (("application_name", "key"), ("options", "-c application_name=opt"))
    assert startup_setting(params, "application_name") == "key"
    assert startup_setting((("options", "-c role=o"), ("Role", "k")), "role") == "k"
    assert login(("options", "-c role=dave")).role == "dave"
    assert login(("role", "k"), ("options", "-c role=o")).role == "k"
    # getopt: -E takes no argument, so the c after it reads the next word as a setting.
    assert login(("options", "-Ec role=eve")).role == "eve"
    assert startup_setting((("user", "u"),), "role") is None


@pytest.mark.parametrize(
    "options",
    [
        "-c pgwarden.identity=forged",
        "-cpgwarden.identity=forged",
        "--pgwarden.identity=forged",
        "--PGWARDEN.IDENTITY=forged",
        "-Ec pgwarden.identity=forged",
        "-c search_path=a -Ec pgwarden.identity=forged",
    ],
)
def test_every_way_of_setting_a_name_is_found_and_stripped(options: str) -> None:
    params = (("user", "app"), ("options", options))
    assert startup_setting(params, "pgwarden.identity") == "forged"
    kept, removed = without_settings(params, RESERVED)
    assert removed
    assert startup_setting(kept, "pgwarden.identity") is None


def test_stripping_keeps_the_other_switches_exactly() -> None:
    params = (
        ("user", "app"),
        ("options", r"-c search_path=a\ b -Ec pgwarden.identity=x --work-mem=64MB"),
        ("PgWarden.Identity", "y"),
        ("application_name", "psql"),
    )
    kept, removed = without_settings(params, RESERVED)
    assert removed
    assert dict(kept) == {
        "user": "app",
        "options": r"-c search_path=a\ b -E --work-mem=64MB",
        "application_name": "psql",
    }
    assert startup_setting(kept, "search_path") == "a b"
    assert startup_setting(kept, "work_mem") == "64MB"
    untouched = (("user", "app"), ("options", r"-c search_path=a\ b"))
    assert without_settings(untouched, RESERVED) == (untouched, False)
    only = (("user", "app"), ("options", "-c pgwarden.identity=x"))
    assert without_settings(only, RESERVED) == ((("user", "app"),), True)
