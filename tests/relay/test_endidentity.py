"""The end identity at login (sans-IO): startup settings read as PostgreSQL reads them, the
trusted-parameter claim, the upstream packet with pgwarden.identity, the statement guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config
from proxy.errors import ConfigError
from proxy.gate import Gate
from proxy.identity import Identity, IdentitySource
from proxy.relay import endidentity
from proxy.relay.handshake import Login, read_login, startup_setting
from proxy.sql.extract import analyze
from proxy.wire.startup import StartupMessage, parse_startup

RESERVED = frozenset({"pgwarden.identity", "pgwarden.identity_source"})


def login(*params: tuple[str, str]) -> Login:
    return read_login(StartupMessage(3, 0, (("user", "app"), *params)))


def sent_login(packet: bytes) -> Login:
    startup = parse_startup(packet)
    assert isinstance(startup, StartupMessage)
    return read_login(startup)


def settings(**values: object) -> endidentity.IdentitySettings:
    cfg = config.defaults().replace(**{f"identity__{k}": v for k, v in values.items()})
    return endidentity.load(cfg)


def test_claim_from_application_name_by_pattern() -> None:
    s = settings(**{"parameter": "application_name", "pattern": r"^billing/(?P<identity>[^/]+)$"})
    assert endidentity.claim(s, login(("application_name", "billing/alice")), "10.0.0.1") == (
        endidentity.Claim("alice")
    )
    assert endidentity.claim(s, login(("application_name", "psql")), "10.0.0.1").identity == ""
    assert endidentity.claim(s, login(), "10.0.0.1") == endidentity.Claim()
    # -c in options counts too, as the server reads it.
    opts = login(("options", "-c application_name=billing/bob"))
    assert endidentity.claim(s, opts, "10.0.0.1").identity == "bob"


def test_claim_from_a_custom_setting_whole_value_and_refusals() -> None:
    s = settings(**{"parameter": "app.end_user"})
    assert endidentity.claim(s, login(("app.end_user", "carol")), "::1").identity == "carol"
    long = login(("app.end_user", "x" * 256))
    assert endidentity.claim(s, long, "::1").refused == "longer than 255 characters"
    odd = login(("app.end_user", "caröl"))
    assert endidentity.claim(s, odd, "::1").refused == "not printable ASCII"


def test_claim_only_from_listed_networks() -> None:
    s = settings(**{"parameter": "app.end_user", "client_addrs": ["10.0.0.0/8", "unix"]})
    carol = login(("app.end_user", "carol"))
    assert endidentity.claim(s, carol, "10.1.2.3").identity == "carol"
    assert endidentity.claim(s, carol, "unix").identity == "carol"
    mapped = endidentity.claim(s, carol, "::ffff:10.1.2.3")
    assert mapped.identity == "carol"
    refused = endidentity.claim(s, carol, "192.168.1.1")
    assert refused.identity == ""
    assert refused.refused == "client address 192.168.1.1 is not in identity.client_addrs"


def test_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{"parameter": "application_name"})
    assert "needs identity.pattern" in str(info.value)
    with pytest.raises(ConfigError) as info:
        settings(pattern="^(x)$")
    assert "identity.pattern: is set but identity.parameter is empty" in str(info.value)
    with pytest.raises(ValueError, match="setting name with a dot"):
        config.defaults().replace(identity__parameter="end_user")
    with pytest.raises(ValueError, match="bad regular expression"):
        config.defaults().replace(identity__pattern="(")
    with pytest.raises(ValueError, match="must name the one"):
        config.defaults().replace(identity__pattern="(a)(b)")
    with pytest.raises(ConfigError, match="bad CIDR"):
        settings(**{"parameter": "a.b", "client_addrs": ["10.0.0.1/8"]})


def test_upstream_packet_carries_pgwarden_identity_and_strips_the_clients() -> None:
    s = settings(propagate="guc")
    forged = login(("options", "-c pgwarden.identity=forged"), ("pgwarden.identity_source", "x"))
    who = Identity(
        "app", "app", end_identity="CN=alice", identity_source=IdentitySource.CERTIFICATE
    )
    packet, stripped = endidentity.upstream_packet(forged, s, who)
    assert stripped
    sent = sent_login(packet)
    assert startup_setting(sent.params, "pgwarden.identity") == "CN=alice"
    assert startup_setting(sent.params, "pgwarden.identity_source") == "certificate"
    assert "options" not in dict(sent.params)
    nobody = Identity("app", "app")
    packet, stripped = endidentity.upstream_packet(login(), s, nobody)
    sent = sent_login(packet)
    assert not stripped
    assert startup_setting(sent.params, "pgwarden.identity") == ""
    assert startup_setting(sent.params, "pgwarden.identity_source") == ""
    # Without propagation the client's packet goes as it came.
    off = settings()
    assert endidentity.upstream_packet(forged, off, who) == (forged.upstream_packet(), False)


def test_a_later_application_name_is_recorded_not_adopted() -> None:
    s = settings(**{"parameter": "application_name", "pattern": r"^billing/(.+)$"})
    alice = Identity(
        "app", "app", client_addr="10.0.0.1",
        end_identity="alice", identity_source=IdentitySource.CLIENT_SUPPLIED,
    )  # fmt: skip
    assert endidentity.changed_claim(s, alice, "billing/mallory") == "mallory"
    assert endidentity.changed_claim(s, alice, "billing/alice") is None
    assert endidentity.changed_claim(s, alice, "psql") == ""  # the claim is dropped: recorded
    cert = Identity("app", "app", end_identity="CN=a", identity_source=IdentitySource.CERTIFICATE)
    assert endidentity.changed_claim(s, cert, "billing/mallory") is None


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("SET pgwarden.identity = 'mallory'", True),
        ("SET LOCAL pgwarden.identity = 'mallory'", True),
        ('set "PGWARDEN.IDENTITY" to mallory', True),  # setting names ignore case, quoted too
        ("SET pgwarden.identity_source = 'certificate'", True),
        ("SELECT set_config('pgwarden.identity', 'mallory', false)", True),
        ("SELECT set_config('PGWARDEN.Identity', 'mallory', true)", True),
        ("SELECT 1; SELECT set_config('pgwarden.identity', 'mallory', false)", True),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET pgwarden.identity = 'm' AS 'x'",
            True,
        ),
        ("ALTER FUNCTION f() SET pgwarden.identity = 'm'", True),
        # Stored code that would set it whenever it runs.
        (
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT set_config("
            "'pgwarden.identity', 'm', false) $$",
            True,
        ),
        (
            "CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config("
            "'pgwarden.identity', 'm', false); END $$",
            True,
        ),
        ("CREATE VIEW v AS SELECT set_config('pgwarden.identity', 'm', false)", True),
        ("DO $$ BEGIN SET pgwarden.identity = 'm'; END $$", True),
        (
            "CREATE FUNCTION h() RETURNS text LANGUAGE sql AS $$ SELECT "
            "current_setting('pgwarden.identity') $$",
            False,
        ),
        ("RESET pgwarden.identity", False),  # back to the startup value: pgwarden's
        ("SET pgwarden.identity TO DEFAULT", False),
        ("RESET ALL", False),
        ("DISCARD ALL", False),
        ("SELECT current_setting('pgwarden.identity')", False),
        ("SET application_name = 'x'", False),
    ],
)
def test_the_gate_refuses_statements_that_set_it(sql: str, refused: bool) -> None:
    guarded = Gate(config.defaults().replace(identity__propagate="guc"), None)
    open_gate = Gate(config.defaults(), None)
    who = Identity("app", "app")
    facts = analyze(sql)
    decision = guarded.decide(who, facts)
    assert (decision.action == "block") is refused
    if refused:
        assert decision.rules[0].id == "identity-guard"
        assert decision.sqlstate == "42501"
    assert open_gate.decide(who, facts).action == "allow"


def test_a_prepared_body_that_sets_it_is_refused_at_execute() -> None:
    guarded = Gate(config.defaults().replace(identity__propagate="guc"), None)
    prepare = analyze("PREPARE p AS SELECT set_config('pgwarden.identity', 'm', false)")
    assert guarded.decide(Identity("app", "app"), prepare).action == "block"


def test_the_guard_holds_in_monitor_mode_too(tmp_path: Path) -> None:
    from proxy.policy.loader import load_policy

    path = tmp_path / "monitor.yaml"
    path.write_text(
        "defaults: {mode: monitor}\n"
        "rules: [{id: x, when: {commands: [DROP TABLE]}, action: block}]\n"
    )
    policy = load_policy([path])
    guarded = Gate(config.defaults().replace(identity__propagate="guc"), policy)
    who = Identity("app", "app")
    assert guarded.decide(who, analyze("DROP TABLE t")).action == "flag"  # monitor: would-be
    decision = guarded.decide(who, analyze("SET pgwarden.identity = 'm'"))
    assert (decision.action, decision.mode) == ("block", "enforce")
