"""Who a client certificate names, from the dict the ssl module gives."""

from __future__ import annotations

from proxy.tls.peer import cert_identity, subject_dn
from proxy.tls.settings import CertIdentity

CERT = {
    "subject": ((("organizationName", "Acme, Inc."),), (("commonName", "alice"),)),
    "subjectAltName": (("DNS", "alice.example.org"), ("email", "alice@example.org")),
}


def test_each_source() -> None:
    assert cert_identity(CERT, CertIdentity.CN) == "alice"
    assert cert_identity(CERT, CertIdentity.SAN_DNS) == "alice.example.org"
    assert cert_identity(CERT, CertIdentity.SAN_EMAIL) == "alice@example.org"
    assert cert_identity(CERT, CertIdentity.SAN_URI) is None


def test_no_certificate_or_ambiguous_field_gives_no_identity() -> None:
    assert cert_identity(None, CertIdentity.CN) is None
    assert cert_identity({}, CertIdentity.CN) is None
    two_cns = {"subject": ((("commonName", "alice"),), (("commonName", "postgres"),))}
    assert cert_identity(two_cns, CertIdentity.CN) is None
    two_dns = {"subjectAltName": (("DNS", "a"), ("DNS", "b"))}
    assert cert_identity(two_dns, CertIdentity.SAN_DNS) is None
    assert cert_identity({"subject": ((("commonName", ""),),)}, CertIdentity.CN) is None


def test_subject_dn_is_rfc4514() -> None:
    assert subject_dn(CERT) == "CN=alice,O=Acme\\, Inc."
    assert subject_dn(None) == ""
