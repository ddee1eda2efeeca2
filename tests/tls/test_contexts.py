"""SSLContext builders, checked by real handshakes in memory; the reloadable holder."""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.tls import clientleg, contexts
from proxy.tls.certs import ThrowawayCA
from proxy.tls.contexts import TLSHolder
from proxy.tls.peer import tls_facts
from proxy.tls.settings import (
    CertIdentity,
    ClientMode,
    ClientTLS,
    TLSSettings,
    TLSVersion,
    UpstreamMode,
    UpstreamTLS,
)
from tests.support.tlspair import TestPKI, handshake


def _client_leg(pki: TestPKI, mode: ClientMode = ClientMode.REQUIRE, **kw: object) -> ClientTLS:
    return ClientTLS(mode=mode, cert_file=str(pki.server_cert), key_file=str(pki.server_key), **kw)  # type: ignore[arg-type]


def _libpq_like(pki: TestPKI, verify: bool = True, cert: bool = False) -> ssl.SSLContext:
    """What a verify-full client (psql sslmode=verify-full sslrootcert=ca.crt) does."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(pki.ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["postgresql"])
    if cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def test_client_leg_serves_a_verifiable_certificate(pki: TestPKI) -> None:
    server_ctx = contexts.client_context(_client_leg(pki))
    server, client = handshake(server_ctx, _libpq_like(pki))
    assert client.selected_alpn_protocol() == "postgresql"
    facts = tls_facts(client)
    assert facts.version in ("TLSv1.2", "TLSv1.3")
    assert facts.peer_subject == "CN=pgwarden,O=pgwarden throwaway"
    assert len(facts.peer_fingerprint) == 64
    # without a CA file no client certificate is asked for
    assert server.getpeercert() is None


def test_wrong_host_name_fails_verify_full(pki: TestPKI) -> None:
    server_ctx = contexts.client_context(_client_leg(pki))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(server_ctx, _libpq_like(pki), server_hostname="db.example.com")


def test_tls_1_1_and_below_refused_and_min_protocol_13(pki: TestPKI) -> None:
    server_ctx = contexts.client_context(_client_leg(pki))
    assert server_ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    strict = contexts.client_context(_client_leg(pki, min_protocol=TLSVersion.TLS1_3))
    old = _libpq_like(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(strict, old)


def test_ciphers_checked(pki: TestPKI) -> None:
    with pytest.raises(ConfigError, match=r"client_tls\.ciphers: no cipher matches"):
        contexts.client_context(_client_leg(pki, ciphers="NO-SUCH-CIPHER"))
    contexts.client_context(_client_leg(pki, ciphers="ECDHE+AESGCM"))


def test_mismatched_key_is_a_config_error(pki: TestPKI, tmp_path: Path) -> None:
    _, other_key = ThrowawayCA().issue("x").write(tmp_path, "x")
    leg = ClientTLS(ClientMode.REQUIRE, str(pki.server_cert), str(other_key))
    with pytest.raises(ConfigError, match=r"client_tls.cert_file: cannot load certificate .*"):
        contexts.client_context(leg)


def test_verify_ca_requires_a_client_certificate(pki: TestPKI) -> None:
    leg = _client_leg(pki, ClientMode.VERIFY_CA, ca_file=str(pki.ca_file))
    server_ctx = contexts.client_context(leg)
    with pytest.raises(ssl.SSLError):
        handshake(server_ctx, _libpq_like(pki))
    server, _ = handshake(server_ctx, _libpq_like(pki, cert=True))
    cert = server.getpeercert()
    assert clientleg.certificate_refusal(leg, cert, "alice") is None


def test_verify_full_needs_the_identity_to_be_the_user(pki: TestPKI) -> None:
    leg = _client_leg(pki, ClientMode.VERIFY_FULL, ca_file=str(pki.ca_file))
    server, _ = handshake(contexts.client_context(leg), _libpq_like(pki, cert=True))
    cert = server.getpeercert()
    assert clientleg.certificate_refusal(leg, cert, "alice") is None
    refusal = clientleg.certificate_refusal(leg, cert, "postgres")
    assert refusal is not None and refusal.sqlstate == "28000"
    assert refusal.message == (
        'certificate validation (verify-full) failed for user "postgres": cn mismatch'
    )
    by_email = _client_leg(
        pki, ClientMode.VERIFY_FULL, ca_file=str(pki.ca_file), identity=CertIdentity.SAN_EMAIL
    )
    assert clientleg.certificate_refusal(by_email, cert, "alice@example.org") is None
    assert clientleg.certificate_refusal(leg, None, "alice") == clientleg.Refusal(
        "28000", "connection requires a valid client certificate"
    )


def test_certificate_from_another_ca_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    leg = _client_leg(pki, ClientMode.VERIFY_CA, ca_file=str(pki.other_ca_file))
    with pytest.raises(ssl.SSLError):
        handshake(contexts.client_context(leg), _libpq_like(pki, cert=True))


def test_client_leg_answers(pki: TestPKI) -> None:
    off = contexts.build(TLSSettings())
    assert clientleg.answer_ssl_request(off) == b"N"
    assert not clientleg.accepts_direct_tls(off)
    on = contexts.build(TLSSettings(client=_client_leg(pki)))
    assert clientleg.answer_ssl_request(on) == b"S"
    assert clientleg.accepts_direct_tls(on)
    no_direct = contexts.build(TLSSettings(client=_client_leg(pki, direct=False)))
    assert not clientleg.accepts_direct_tls(no_direct)
    refusal = clientleg.plaintext_refusal(on.settings.client, "10.0.0.9", "alice", "app")
    assert refusal is not None and refusal.sqlstate == "28000" and "10.0.0.9" in refusal.message
    prefer = _client_leg(pki, ClientMode.PREFER)
    assert clientleg.plaintext_refusal(prefer, "10.0.0.9", "alice", "app") is None


def _upstream_server_ctx(pki: TestPKI, client_ca: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca:
        ctx.load_verify_locations(pki.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_upstream_verify_full_checks_chain_and_host(pki: TestPKI) -> None:
    leg = UpstreamTLS(UpstreamMode.VERIFY_FULL, ca_file=str(pki.ca_file))
    ctx = contexts.upstream_context(leg)
    assert ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
    handshake(_upstream_server_ctx(pki), ctx, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(_upstream_server_ctx(pki), ctx, "db.example.com")
    wrong_ca = contexts.upstream_context(
        UpstreamTLS(UpstreamMode.VERIFY_FULL, ca_file=str(pki.other_ca_file))
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(_upstream_server_ctx(pki), wrong_ca, "localhost")


def test_upstream_verify_ca_ignores_the_name_and_require_is_unverified(pki: TestPKI) -> None:
    verify_ca = contexts.upstream_context(
        UpstreamTLS(UpstreamMode.VERIFY_CA, ca_file=str(pki.ca_file))
    )
    handshake(_upstream_server_ctx(pki), verify_ca, "db.example.com")
    require = contexts.upstream_context(UpstreamTLS(UpstreamMode.REQUIRE))
    assert require.verify_mode is ssl.CERT_NONE
    # libpq: require with a root certificate configured verifies the chain
    require_ca = UpstreamTLS(UpstreamMode.REQUIRE, ca_file=str(pki.other_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(_upstream_server_ctx(pki), contexts.upstream_context(require_ca), None)


def test_upstream_verify_full_default_uses_the_system_bundle() -> None:
    ctx = contexts.upstream_context(UpstreamTLS(UpstreamMode.VERIFY_FULL))
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_upstream_client_certificate(pki: TestPKI) -> None:
    leg = UpstreamTLS(
        UpstreamMode.VERIFY_FULL,
        ca_file=str(pki.ca_file),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    server, _ = handshake(_upstream_server_ctx(pki, client_ca=True), contexts.upstream_context(leg))
    assert dict(x[0] for x in server.getpeercert()["subject"])["commonName"] == "alice"


def test_holder_reload_swaps_and_keeps_old_on_failure(pki: TestPKI, tmp_path: Path) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o600)
    holder = TLSHolder.from_settings(
        TLSSettings(client=ClientTLS(ClientMode.REQUIRE, str(cert), str(key)))
    )
    first = holder.current
    assert first.client is not None
    # a session that started before the reload keeps its context
    kept_server, _ = handshake(first.client, _libpq_like(pki))

    renewed = pki.ca.issue("pgwarden-renewed", dns=["localhost"], ips=["127.0.0.1"])
    renewed.write(tmp_path, "live")
    assert holder.reload() == ()
    second = holder.current
    assert second is not first and second.client is not None
    _, client = handshake(second.client, _libpq_like(pki))
    assert "CN=pgwarden-renewed" in tls_facts(client).peer_subject
    assert holder.reloads == 1

    key.write_text("garbage")
    problems = holder.reload()
    assert problems and "client_tls.cert_file: cannot load certificate" in problems[0]
    assert holder.current is second and holder.reload_failures == 1
    kept_server.write(b"still alive")  # the old session's TLS object still works


def test_python_completes_without_alpn_when_the_offer_lacks_postgresql(pki: TestPKI) -> None:
    """Why sniff.alpn_refusal reads the ClientHello: the handshake alone does not refuse."""
    client = _libpq_like(pki)
    client.set_alpn_protocols(["h2"])
    server, _ = handshake(contexts.client_context(_client_leg(pki)), client)
    assert server.selected_alpn_protocol() is None


def test_own_certificate_is_the_leaf_of_the_chain(pki: TestPKI, tmp_path: Path) -> None:
    chain = tmp_path / "chain.crt"
    chain.write_bytes(pki.server_cert.read_bytes() + pki.ca.cert_pem)
    built = contexts.build(
        TLSSettings(client=ClientTLS(ClientMode.REQUIRE, str(chain), str(pki.server_key)))
    )
    assert built.client_cert_der == ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
    assert contexts.build(TLSSettings()).client_cert_der is None
