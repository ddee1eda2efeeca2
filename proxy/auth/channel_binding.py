"""SCRAM channel binding data of type ``tls-server-end-point`` (RFC 5929 §4).

The binding is a hash of the server's certificate, with the hash of the certificate's own
signature algorithm (MD5 and SHA-1 are replaced by SHA-256). A client that binds proves it
saw *that* certificate, so a proxy in the middle can only take part with its own: pgwarden
binds client logins to the certificate it presents, never to the server's.

``cryptography`` (about 7 MB of a fresh process) is imported only where TLS is on: by
:func:`preload` when the server starts with TLS on a leg, so that the first login does not
import it on the event loop, and otherwise at the first binding.
"""

from __future__ import annotations

import hashlib

_UPGRADED = {"md5", "sha1"}


def preload() -> None:
    """Import what :func:`tls_server_end_point` needs now rather than at the first login."""
    from cryptography import x509  # noqa: F401


def tls_server_end_point(cert_der: bytes) -> bytes | None:
    """The binding data for a DER certificate; None when its signature has no hash
    (Ed25519/Ed448), where PostgreSQL offers no binding either."""
    from cryptography import x509

    algorithm = x509.load_der_x509_certificate(cert_der).signature_hash_algorithm
    if algorithm is None:
        return None
    name = algorithm.name.lower()
    if name in _UPGRADED:
        name = "sha256"
    return hashlib.new(name.replace("-", "_"), cert_der).digest()
