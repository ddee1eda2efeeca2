"""pgwarden's own login step (auth.mode proxy / cert), without sockets: pgwarden's SCRAM
client, and libpq's md5 and cleartext answers, play the client against it."""

from __future__ import annotations

from typing import Any, cast

import pytest

from proxy.auth import password as pw
from proxy.auth import scram
from proxy.auth.identmap import parse as parse_ident
from proxy.auth.scram_client import ScramClient
from proxy.errors import AuthenticationError
from proxy.identity import IdentitySource
from proxy.relay.handshake import AuthStep, read_login
from proxy.relay.localauth import (
    MD5,
    PASSWORD,
    SCRAM,
    LocalAuth,
    LocalAuthSettings,
    choose_method,
)
from proxy.tls.clientleg import SecuredClient
from proxy.wire import messages as m
from proxy.wire.startup import StartupMessage

SECRET = scram.make_secret("s3cret", iterations=4096)
MD5_SECRET = pw.make_md5("s3cret", "alice")
SCRAM_ONLY = LocalAuthSettings()


def _login(user: str = "alice", minor: int = 0, mode: str = "proxy") -> LocalAuth:
    return LocalAuth(mode, read_login(StartupMessage(3, minor, (("user", user),))))


def _body(message: bytes) -> bytes:
    return message[5:]


def _password(text: str) -> bytes:
    return text.encode() + b"\x00"


def _secured(cert: dict[str, Any] | None = None) -> SecuredClient:
    # Only the fields LocalAuth reads: what the client presented, what pgwarden did.
    return SecuredClient(cast(Any, None), cast(Any, None), cert, b"pgwarden-cert-der")


def _run_scram(local: LocalAuth, password: str, verifier: pw.Verifier | None = SECRET) -> None:
    greeting, done = local.start(None, SCRAM_ONLY, verifier)
    assert not done and greeting[:1] == b"R"
    client = ScramClient(password=password)
    first = client.initial_response(m.sasl_mechanisms(_body(greeting)))
    challenge, done = local.client_message(_body(first))
    assert not done
    final = client.continue_response(_body(challenge)[4:])
    server_final, done = local.client_message(_body(final))
    assert done
    client.final(_body(server_final)[4:])  # pgwarden proved it holds the secret too


def test_right_password_recovers_the_key_for_the_upstream_login() -> None:
    local = _login()
    _run_scram(local, "s3cret")
    assert local.keys is not None
    assert scram.sha256(local.keys.client_key) == SECRET.stored_key


@pytest.mark.parametrize(
    ("user", "password", "verifier"),
    [("alice", "wrong", SECRET), ("mallory", "s3cret", None), ("alice", "s3cret", MD5_SECRET)],
)
def test_wrong_password_unknown_user_and_unusable_secret_fail_alike(
    user: str, password: str, verifier: pw.Verifier | None
) -> None:
    with pytest.raises(AuthenticationError, match=f'failed for user "{user}"') as info:
        _run_scram(_login(user), password, verifier)
    assert info.value.sqlstate == "28P01"


def test_a_32_client_is_served_32_and_32_is_asked_upstream() -> None:
    local = _login(minor=2)
    greeting, _ = local.start(None, SCRAM_ONLY, SECRET)
    assert greeting[:1] == b"R"  # no NegotiateProtocolVersion: pgwarden speaks 3.2
    assert local.login.protocol_minor == 2
    assert local.login.upstream_packet()[4:8] == (3 << 16 | 2).to_bytes(4, "big")


def test_a_33_client_is_told_32() -> None:
    local = _login(minor=3)
    greeting, _ = local.start(None, SCRAM_ONLY, SECRET)
    assert greeting[:1] == b"v"
    end = 1 + int.from_bytes(greeting[1:5], "big")
    assert m.decode_negotiate_protocol_version(greeting[5:end]) == (2, [])
    assert greeting[end : end + 1] == b"R" and local.login.protocol_minor == 2


def test_a_30_server_behind_a_32_client_is_absorbed() -> None:
    local = _login(minor=2)
    relay = local.upstream_relay("s3cret", None)
    out, step = relay.on_message(ord("v"), (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    assert (out, step) == (b"", AuthStep.RELAY)  # the client never sees the server's 'v'
    assert relay.protocol_minor == 2


@pytest.mark.parametrize(
    ("methods", "verifier", "tls", "expected"),
    [
        ((SCRAM,), SECRET, False, SCRAM),
        ((SCRAM,), None, False, SCRAM),
        ((SCRAM,), MD5_SECRET, False, SCRAM),  # the mock exchange: fails at the proof
        ((SCRAM, MD5), MD5_SECRET, False, MD5),
        ((MD5,), SECRET, False, SCRAM),  # as PostgreSQL's md5 method for a SCRAM secret
        ((MD5,), None, False, SCRAM),  # the mock exchange, as PostgreSQL's default
        ((PASSWORD,), SECRET, True, PASSWORD),
        ((PASSWORD,), SECRET, False, None),
        ((PASSWORD, SCRAM), SECRET, False, SCRAM),
        ((SCRAM, PASSWORD), MD5_SECRET, True, PASSWORD),
    ],
)
def test_method_choice(
    methods: tuple[str, ...], verifier: pw.Verifier | None, tls: bool, expected: str | None
) -> None:
    assert choose_method(methods, verifier, tls) == expected


def _md5_login(local: LocalAuth, answer: str, verifier: pw.Verifier | None) -> None:
    greeting, done = local.start(None, LocalAuthSettings(methods=(MD5,)), verifier)
    assert not done and m.auth_code(_body(greeting)) == 5
    salt = _body(greeting)[4:8]
    local.client_message(_password(pw.md5_password(answer, local.login.user, salt)))


def test_md5_right_and_wrong() -> None:
    local = _login()
    _md5_login(local, "s3cret", MD5_SECRET)
    assert local.md5_secret == MD5_SECRET and local.keys is None and local.password is None
    with pytest.raises(AuthenticationError, match='failed for user "alice"') as info:
        _md5_login(_login(), "wrong", MD5_SECRET)
    assert info.value.sqlstate == "28P01"


def test_md5_answers_the_servers_md5_challenge_upstream() -> None:
    local = _login()
    _md5_login(local, "s3cret", MD5_SECRET)
    relay = local.upstream_relay(None, None)
    salt = b"\x01\x02\x03\x04"
    out, step = relay.on_message(ord("R"), (5).to_bytes(4, "big") + salt)
    assert step is AuthStep.TO_SERVER and out == b""
    assert relay.to_server == m.message(
        ord("p"), _password(pw.md5_password("s3cret", "alice", salt))
    )
    # a server asking for SCRAM cannot be answered from an md5 entry
    with pytest.raises(AuthenticationError, match='no credential for role "alice"'):
        relay.on_message(ord("R"), (10).to_bytes(4, "big") + b"SCRAM-SHA-256\x00\x00")


@pytest.mark.parametrize("verifier", [SECRET, MD5_SECRET])
def test_cleartext_checked_against_either_secret(verifier: pw.Verifier) -> None:
    settings = LocalAuthSettings(methods=(PASSWORD,))
    local = _login()
    greeting, _ = local.start(_secured(), settings, verifier)
    assert m.auth_code(_body(greeting)) == 3
    assert local.client_message(_password("s3cret")) == (b"", True)
    assert local.password == "s3cret"  # logs in upstream with it
    wrong = _login()
    wrong.start(_secured(), settings, verifier)
    with pytest.raises(AuthenticationError, match='password authentication failed for user "a'):
        wrong.client_message(_password("s3cret "))


def test_cleartext_refused_over_plaintext_unless_allowed() -> None:
    settings = LocalAuthSettings(methods=(PASSWORD,))
    with pytest.raises(AuthenticationError, match="cleartext password over an unencrypted") as e:
        _login().start(None, settings, SECRET)
    assert e.value.sqlstate == "28000"
    allowed = LocalAuthSettings(methods=(PASSWORD,), cleartext_without_tls=True)
    greeting, _ = _login().start(None, allowed, SECRET)
    assert m.auth_code(_body(greeting)) == 3


@pytest.mark.parametrize(
    ("body", "message", "sqlstate"),
    [
        (b"\x00", "empty password returned by client", "28P01"),
        (b"abc", "invalid password packet size", "08P01"),
        (b"a\x00b\x00", "invalid password packet size", "08P01"),
    ],
)
def test_bad_password_packets(body: bytes, message: str, sqlstate: str) -> None:
    local = _login()
    local.start(_secured(), LocalAuthSettings(methods=(PASSWORD,)), SECRET)
    with pytest.raises(AuthenticationError, match=message) as info:
        local.client_message(body)
    assert info.value.sqlstate == sqlstate


def _cert(cn: str) -> dict[str, Any]:
    return {"subject": ((("organizationName", "Acme"),), (("commonName", cn),))}


def test_cert_mode_without_a_matching_certificate_is_refused() -> None:
    for secured in (None, _secured(_cert("bob"))):
        with pytest.raises(
            AuthenticationError, match='certificate authentication failed for user "alice"'
        ) as info:
            _login(mode="cert").start(secured, SCRAM_ONLY)
        assert info.value.sqlstate == "28000"


def test_cert_mode_identity_is_the_subject() -> None:
    local = _login(mode="cert")
    assert local.start(_secured(_cert("alice")), SCRAM_ONLY)[1]
    assert local.end_identity == "CN=alice,O=Acme"
    assert local.identity_source is IdentitySource.CERTIFICATE


def test_cert_mode_with_a_map() -> None:
    ident = parse_ident(
        "ops  /^(.*)@ops$  \\1\nops  deploy@ci  app_owner\nother alice@x alice\n", "ident", "ops"
    )
    settings = LocalAuthSettings(ident=ident, ident_map="ops")
    for cn, user, ok in [
        ("bob@ops", "bob", True),
        ("bob@ops", "alice", False),
        ("deploy@ci", "app_owner", True),
        ("alice@x", "alice", False),  # another map's line
        ("alice", "alice", False),  # with a map, the name alone no longer suffices
    ]:
        local = _login(user, mode="cert")
        if ok:
            assert local.start(_secured(_cert(cn)), settings)[1]
            assert local.end_identity == f"CN={cn},O=Acme"
        else:
            with pytest.raises(AuthenticationError, match="certificate authentication failed"):
                local.start(_secured(_cert(cn)), settings)
