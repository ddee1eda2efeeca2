"""pgwarden's own login step (auth.mode proxy / cert), without sockets: pgwarden's SCRAM
client plays the client against it."""

from __future__ import annotations

import pytest

from proxy.auth import scram
from proxy.auth.scram_client import ScramClient
from proxy.auth.users import UsersFile
from proxy.errors import AuthenticationError
from proxy.relay.handshake import read_login
from proxy.relay.localauth import LocalAuth
from proxy.tls.settings import CertIdentity
from proxy.wire import messages as m
from proxy.wire.startup import StartupMessage

SECRET = scram.make_secret("s3cret", iterations=4096)
USERS = UsersFile("users.txt", {"alice": SECRET})


def _login(user: str = "alice", minor: int = 0) -> LocalAuth:
    return LocalAuth("proxy", read_login(StartupMessage(3, minor, (("user", user),))))


def _body(message: bytes) -> bytes:
    return message[5:]


def _run(local: LocalAuth, password: str) -> None:
    greeting, done = local.start(USERS, None, CertIdentity.CN)
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
    _run(local, "s3cret")
    assert local.keys is not None
    assert scram.sha256(local.keys.client_key) == SECRET.stored_key


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "s3cret")])
def test_wrong_password_and_unknown_user_fail_alike(user: str, password: str) -> None:
    with pytest.raises(AuthenticationError, match=f'failed for user "{user}"') as info:
        _run(_login(user), password)
    assert info.value.sqlstate == "28P01"


def test_a_32_client_gets_its_negotiation_first_and_30_goes_upstream() -> None:
    local = _login(minor=2)
    greeting, _ = local.start(USERS, None, CertIdentity.CN)
    assert greeting[:1] == b"v"  # NegotiateProtocolVersion before the SASL request
    assert local.login.protocol_minor == 0


def test_cert_mode_without_a_matching_certificate_is_refused() -> None:
    local = LocalAuth("cert", read_login(StartupMessage(3, 0, (("user", "alice"),))))
    with pytest.raises(
        AuthenticationError, match='certificate authentication failed for user "alice"'
    ):
        local.start(None, None, CertIdentity.CN)
