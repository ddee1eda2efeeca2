"""SCRAM-SHA-256 both ways, from bytes: RFC 7677's vector, PostgreSQL's errors, binding."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth import scram
from proxy.auth.channel_binding import tls_server_end_point
from proxy.auth.scram_client import ScramClient
from proxy.auth.scram_server import ScramPhase, ScramServer
from proxy.errors import AuthenticationError, BackendProtocolError, ProtocolError
from proxy.tls.certs import ThrowawayCA
from proxy.wire import messages as m
from proxy.wire import sasl
from tests.support.tlspair import TestPKI


def _body(message: bytes) -> bytes:
    (length,) = struct.unpack_from("!I", message, 1)
    assert len(message) == 1 + length
    return message[5:]


def _auth_data(message: bytes) -> bytes:
    return _body(message)[4:]


def _exchange(server: ScramServer, client: ScramClient, tamper_final: bytes | None = None) -> bytes:
    offer = _body(server.sasl_request())
    initial = client.initial_response(m.sasl_mechanisms(offer))
    challenge = server.initial_response(_body(initial))
    response = client.continue_response(_auth_data(challenge))
    final = server.final_response(tamper_final if tamper_final is not None else _body(response))
    client.final(_auth_data(final))
    return final


def _der(pki_cert: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pki_cert).read_text())


def test_rfc7677_vector() -> None:
    secret = scram.make_secret("pencil", 4096, scram.unb64("W22ZaJ0SNY7soEsUEjb6gQ=="))
    server = ScramServer("user", secret, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    challenge = server.initial_response(
        b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first
    )
    assert _auth_data(challenge) == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = server.final_response(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert _auth_data(final) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.phase is ScramPhase.DONE


def test_secret_text_round_trip() -> None:
    secret = scram.make_secret("pw", 4096, b"0123456789abcdef")
    text = str(secret)
    assert text.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram.ScramSecret.parse(text) == secret
    for bad in ("md5abc", "SCRAM-SHA-256$0:AA==$AA==:AA==", "SCRAM-SHA-256$1:!!$a:b"):
        with pytest.raises(ValueError):
            scram.ScramSecret.parse(bad)


def test_saslprep() -> None:
    assert scram.saslprep("I\u00adX") == "IX"  # soft hyphen mapped to nothing
    assert scram.saslprep("user") == "user"
    assert scram.saslprep("a\u00a0b") == "a b"  # non-ASCII space mapped to space
    assert scram.saslprep("\u2168") == "IX"  # NFKC
    assert scram.saslprep("a\u0007b") is None  # prohibited: raw password is hashed instead
    assert scram.normalize_password("a\u0007b") == b"a\x07b"
    assert scram.saslprep("\u0627\u0031") is None  # RandALCat must end the string too


def test_password_login_plain() -> None:
    secret = scram.make_secret("alice-pw")
    server = ScramServer("alice", secret)
    assert server.mechanisms == ["SCRAM-SHA-256"]
    _exchange(server, ScramClient(password="alice-pw"))
    assert (
        server.upstream_keys().client_key
        == scram.keys_from_password("alice-pw", secret.salt, secret.iterations).client_key
    )


def test_wrong_password_is_28p01_with_postgres_text() -> None:
    server = ScramServer("alice", scram.make_secret("alice-pw"))
    with pytest.raises(AuthenticationError) as err:
        _exchange(server, ScramClient(password="guess"))
    assert (err.value.sqlstate, str(err.value)) == (
        "28P01",
        'password authentication failed for user "alice"',
    )
    assert server.phase is ScramPhase.FAILED


def test_unknown_user_fails_only_at_the_proof_with_a_stable_salt() -> None:
    one, two = ScramServer("mallory", None), ScramServer("mallory", None)
    client = ScramClient(password="x")
    challenge = one.initial_response(_body(client.initial_response([b"SCRAM-SHA-256"])))
    salt_one = dict(scram.split_attributes(_auth_data(challenge).decode(), "x"))["s"]
    client_two = ScramClient(password="x")
    challenge_two = two.initial_response(_body(client_two.initial_response([b"SCRAM-SHA-256"])))
    assert dict(scram.split_attributes(_auth_data(challenge_two).decode(), "x"))["s"] == salt_one
    with pytest.raises(
        AuthenticationError, match='password authentication failed for user "mallory"'
    ):
        one.final_response(_body(client.continue_response(_auth_data(challenge))))


def test_plus_binds_to_pgwardens_certificate(pki: TestPKI) -> None:
    cert = _der(str(pki.server_cert))
    secret = scram.make_secret("pw")
    server = ScramServer("alice", secret, server_cert=cert)
    assert server.mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    client = ScramClient(password="pw", server_cert=cert, channel_binding="require")
    _exchange(server, client)
    assert client.mechanism == "SCRAM-SHA-256-PLUS"


def test_binding_to_another_certificate_fails(pki: TestPKI) -> None:
    """What a relaying proxy would cause: the client saw a different certificate."""
    ours = _der(str(pki.server_cert))
    theirs = ssl.PEM_cert_to_DER_cert(ThrowawayCA().issue("other").cert_pem.decode())
    server = ScramServer("alice", scram.make_secret("pw"), server_cert=ours)
    with pytest.raises(AuthenticationError) as err:
        _exchange(server, ScramClient(password="pw", server_cert=theirs))
    assert (err.value.sqlstate, str(err.value)) == ("28000", "SCRAM channel binding check failed")


def test_downgrade_y_flag_is_refused_over_tls(pki: TestPKI) -> None:
    cert = _der(str(pki.server_cert))
    server = ScramServer("alice", scram.make_secret("pw"), server_cert=cert)
    client = ScramClient(password="pw", server_cert=cert)
    # someone removed -PLUS from our offer: the client says "y" (could bind, not offered)
    initial = client.initial_response([b"SCRAM-SHA-256"])
    with pytest.raises(AuthenticationError) as err:
        server.initial_response(_body(initial))
    assert (err.value.sqlstate, str(err.value)) == (
        "28000",
        "SCRAM channel binding negotiation error",
    )
    assert "However, this server does support channel binding." in err.value.detail


def test_channel_binding_disable_and_plaintext_y(pki: TestPKI) -> None:
    cert = _der(str(pki.server_cert))
    server = ScramServer("alice", scram.make_secret("pw"), server_cert=cert)
    client = ScramClient(password="pw", server_cert=cert, channel_binding="disable")
    _exchange(server, client)
    assert client.mechanism == "SCRAM-SHA-256"
    # in plaintext, "y" is fine: the server cannot bind either
    plain = ScramServer("alice", scram.make_secret("pw"))
    _exchange(plain, ScramClient(password="pw", server_cert=cert))


def test_client_require_refuses_a_server_without_plus(pki: TestPKI) -> None:
    client = ScramClient(
        password="pw", server_cert=_der(str(pki.server_cert)), channel_binding="require"
    )
    with pytest.raises(AuthenticationError, match="channel binding is required"):
        client.initial_response([b"SCRAM-SHA-256"])


def test_nonce_and_proof_tampering() -> None:
    server = ScramServer("alice", scram.make_secret("pw"))
    client = ScramClient(password="pw")
    challenge = server.initial_response(_body(client.initial_response([b"SCRAM-SHA-256"])))
    final = _body(client.continue_response(_auth_data(challenge)))
    tampered = final.replace(b",r=", b",r=X", 1)
    with pytest.raises(AuthenticationError, match="invalid SCRAM response") as err:
        server.final_response(tampered)
    assert err.value.detail == "Nonce does not match."


def test_server_signature_is_checked_by_the_client() -> None:
    server = ScramServer("alice", scram.make_secret("pw"))
    client = ScramClient(password="pw")
    challenge = server.initial_response(_body(client.initial_response([b"SCRAM-SHA-256"])))
    server.final_response(_body(client.continue_response(_auth_data(challenge))))
    with pytest.raises(BackendProtocolError, match="signature is invalid"):
        client.final(b"v=" + scram.b64(b"x" * 32).encode())


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"n,a=bob,n=,r=abc", "authorization identity"),
        (b"p=tls-server-end-point,,n=,r=abc", "malformed SCRAM message"),
        (b"q,,n=,r=abc", "malformed SCRAM message"),
        (b"n,,m=ext,n=,r=abc", "unsupported SCRAM extension"),
        (b"n,,n=,r=a b", "malformed SCRAM message"),
        (b"n,,r=abc", "malformed SCRAM message"),
        (b"\xff", "malformed SCRAM message"),
    ],
)
def test_malformed_first_messages(first: bytes, message: str) -> None:
    server = ScramServer("alice", scram.make_secret("pw"))
    body = b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first
    with pytest.raises(AuthenticationError, match=message):
        server.initial_response(body)


def test_mechanism_must_be_offered() -> None:
    server = ScramServer("alice", scram.make_secret("pw"))  # plaintext: no -PLUS offered
    first = b"p=tls-server-end-point,,n=,r=abc"
    body = b"SCRAM-SHA-256-PLUS\x00" + struct.pack("!i", len(first)) + first
    with pytest.raises(AuthenticationError, match="invalid SASL authentication mechanism"):
        server.initial_response(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_garbage_ends_in_our_errors(first: bytes, final: bytes) -> None:
    server = ScramServer("alice", scram.make_secret("pw", iterations=1))
    try:
        server.initial_response(first)
        server.final_response(final)
    except (AuthenticationError, ProtocolError):
        return
    raise AssertionError("garbage authenticated")


def test_end_point_hash_follows_the_signature_algorithm() -> None:
    from cryptography.hazmat.primitives import hashes

    ca = ThrowawayCA()
    for algorithm, size in ((hashes.SHA256(), 32), (hashes.SHA384(), 48), (hashes.SHA512(), 64)):
        der = ssl.PEM_cert_to_DER_cert(ca.issue("x", hash_algorithm=algorithm).cert_pem.decode())
        binding = tls_server_end_point(der)
        assert binding is not None and len(binding) == size


def test_sasl_initial_response_codec() -> None:
    raw = sasl.encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x")
    decoded = sasl.decode_sasl_initial_response(raw[5:])
    assert decoded == sasl.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x")
    assert sasl.decode_sasl_initial_response(b"X\x00\xff\xff\xff\xff").data is None
    with pytest.raises(ProtocolError):
        sasl.decode_sasl_initial_response(b"X\x00\x00\x00\x00\x09abc")


def test_unsupported_binding_type(pki: TestPKI) -> None:
    server = ScramServer("alice", scram.make_secret("pw"), server_cert=_der(str(pki.server_cert)))
    first = b"p=tls-unique,,n=,r=abc"
    body = b"SCRAM-SHA-256-PLUS\x00" + struct.pack("!i", len(first)) + first
    with pytest.raises(
        AuthenticationError, match='unsupported SCRAM channel-binding type "tls-unique"'
    ):
        server.initial_response(body)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_garbage_final_after_a_valid_first_message(pki: TestPKI, final: str) -> None:
    """Bound and unbound exchanges: any client-final text ends in our errors (a non-ASCII
    binding once escaped as TypeError from compare_digest)."""
    cert = _der(str(pki.server_cert))
    offer = [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]
    for binding in ("require", "disable"):
        for text in (final, "c=\u00e9," + final, "c=\u00e9,r=x,p=" + final):
            server = ScramServer("alice", scram.make_secret("pw", iterations=1), server_cert=cert)
            client = ScramClient(password="pw", server_cert=cert, channel_binding=binding)  # type: ignore[arg-type]
            server.initial_response(_body(client.initial_response(offer)))
            with pytest.raises((AuthenticationError, ProtocolError)):
                server.final_response(text.encode())
