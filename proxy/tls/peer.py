"""Facts about the other end of a TLS connection: who its certificate names, and how the
connection is protected (for the audit trail and the cert authentication mode).

Works on what :meth:`ssl.SSLObject.getpeercert` returns, which is only filled in for a
certificate the handshake verified; an unverified certificate gives no identity at all.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.tls.settings import CertIdentity

# RFC 4514 short names for the attributes a subject usually has.
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "emailAddress": "emailAddress",
    "userId": "UID",
}
_SAN_KIND = {
    CertIdentity.SAN_DNS: "DNS",
    CertIdentity.SAN_EMAIL: "email",
    CertIdentity.SAN_URI: "URI",
}

PeerCert = Mapping[str, Any]


def _attributes(cert: PeerCert, name: str) -> list[str]:
    return [value for rdn in cert.get("subject", ()) for key, value in rdn if key == name]


def cert_identity(cert: PeerCert | None, source: CertIdentity) -> str | None:
    """The user a verified certificate names, or None.

    None also when the field occurs more than once: picking one of several names would let
    whoever got the certificate issued choose which user it logs in as.
    """
    if not cert:
        return None
    if source is CertIdentity.CN:
        values = _attributes(cert, "commonName")
    else:
        kind = _SAN_KIND[source]
        values = [value for key, value in cert.get("subjectAltName", ()) if key == kind]
    return values[0] if len(values) == 1 and values[0] else None


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def subject_dn(cert: PeerCert | None) -> str:
    """The subject as an RFC 4514 string (most specific first), or '' without a certificate."""
    if not cert:
        return ""
    parts = []
    for rdn in reversed(cert.get("subject", ())):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class TLSFacts:
    """How one leg is protected, as recorded in the audit trail."""

    version: str
    cipher: str
    alpn: str | None
    peer_subject: str  # '' when the peer sent no verified certificate
    peer_fingerprint: str  # SHA-256 of the peer certificate (DER), hex; '' when none

    def audit(self) -> dict[str, str | None]:
        """The fields recorded in ``session_start`` (docs/audit-log.md)."""
        return {
            "protocol": self.version,
            "cipher": self.cipher,
            "alpn": self.alpn,
            "peer_subject": self.peer_subject or None,
            "peer_fingerprint": self.peer_fingerprint or None,
        }


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSFacts:
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    return TLSFacts(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        alpn=ssl_object.selected_alpn_protocol(),
        peer_subject=subject_dn(ssl_object.getpeercert()),
        peer_fingerprint=hashlib.sha256(der).hexdigest() if der else "",
    )
