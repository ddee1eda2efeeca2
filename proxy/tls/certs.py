"""Throwaway certificate authorities for ``pgwarden demo`` and the test suite.

Never for production: keys are made on the spot, kept in files next to each other, and the
CA can sign anything. What it gives is a real chain (CA → leaf) so verify-full is exercised
exactly as with a real CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)
# Issued a little in the past: a peer whose clock is slightly behind still accepts the cert.
_BACKDATE = datetime.timedelta(hours=1)

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``name.crt`` and ``name.key`` (mode 0600, as PostgreSQL demands of a key)."""
        cert = directory / f"{name}.crt"
        key = directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key_pem)
        os.chmod(key, 0o600)
        return cert, key


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgwarden throwaway"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class ThrowawayCA:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "pgwarden throwaway CA") -> None:
        self._key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        self._name = _name(common_name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, directory: Path, name: str = "ca") -> Path:
        path = directory / f"{name}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        common_name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        emails: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = True,
        client: bool = False,
        hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
        valid_for: datetime.timedelta = _VALIDITY,
    ) -> Issued:
        """A leaf certificate signed by this CA. ``hash_algorithm`` picks the signature hash
        (it decides the tls-server-end-point channel-binding hash)."""
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.RFC822Name(e) for e in emails]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hash_algorithm or hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True, slots=True)
class DemoPKI:
    """The files ``pgwarden demo`` (and the suite) make: one CA, a certificate for pgwarden's
    client-facing listener and one for the PostgreSQL server, both valid for localhost."""

    directory: Path
    ca_file: Path
    proxy_cert: Path
    proxy_key: Path
    server_cert: Path
    server_key: Path


LOCAL_NAMES = ("localhost",)
LOCAL_IPS = ("127.0.0.1", "::1")


def make_demo_pki(
    directory: Path, dns: Sequence[str] = LOCAL_NAMES, ips: Sequence[str] = LOCAL_IPS
) -> DemoPKI:
    """A throwaway CA plus proxy and server certificates written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ThrowawayCA()
    ca_file = ca.write_ca(directory)
    proxy_cert, proxy_key = ca.issue("pgwarden", dns=dns, ips=ips).write(directory, "pgwarden")
    server_cert, server_key = ca.issue("postgres", dns=dns, ips=ips).write(directory, "postgres")
    return DemoPKI(directory, ca_file, proxy_cert, proxy_key, server_cert, server_key)
