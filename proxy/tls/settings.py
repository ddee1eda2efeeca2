"""TLS settings of both legs, read from the configuration and checked as a whole.

:mod:`proxy.config` parses each key on its own; the rules that tie keys together (a mode that
needs a certificate, a CA file that must exist, a key file others may read) live here, and
:func:`load` reports every broken one at once as a :class:`~proxy.errors.ConfigError`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum

from proxy.config import Config
from proxy.errors import ConfigError, SourceProblem


class ClientMode(Enum):
    """What pgwarden demands of clients (PgBouncer's ``client_tls_sslmode``)."""

    DISABLE = "disable"  # SSLRequest answered 'N'
    ALLOW = "allow"  # TLS when the client asks; plaintext too
    PREFER = "prefer"  # the same as allow on the server side (as in PgBouncer)
    REQUIRE = "require"  # plaintext clients are refused
    VERIFY_CA = "verify-ca"  # plus a client certificate chaining to client_tls.ca_file
    VERIFY_FULL = "verify-full"  # plus the certificate's identity must be the user name

    @property
    def offers_tls(self) -> bool:
        return self is not ClientMode.DISABLE

    @property
    def requires_tls(self) -> bool:
        return self in (ClientMode.REQUIRE, ClientMode.VERIFY_CA, ClientMode.VERIFY_FULL)

    @property
    def requires_cert(self) -> bool:
        return self in (ClientMode.VERIFY_CA, ClientMode.VERIFY_FULL)


class UpstreamMode(Enum):
    """libpq's ``sslmode`` for pgwarden's own connections to PostgreSQL."""

    DISABLE = "disable"
    PREFER = "prefer"  # TLS if the server agrees, unverified; plaintext otherwise
    REQUIRE = "require"  # TLS or nothing; unverified unless upstream_tls.ca_file is set
    VERIFY_CA = "verify-ca"  # the chain is checked
    VERIFY_FULL = "verify-full"  # the chain and the host name are checked

    @property
    def attempts_tls(self) -> bool:
        return self is not UpstreamMode.DISABLE

    @property
    def requires_tls(self) -> bool:
        return self not in (UpstreamMode.DISABLE, UpstreamMode.PREFER)


class CertIdentity(Enum):
    """Which field of a verified client certificate names the user."""

    CN = "cn"
    SAN_DNS = "san-dns"
    SAN_EMAIL = "san-email"
    SAN_URI = "san-uri"


class TLSVersion(Enum):
    TLS1_2 = "TLSv1.2"
    TLS1_3 = "TLSv1.3"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    mode: ClientMode = ClientMode.DISABLE
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    min_protocol: TLSVersion = TLSVersion.TLS1_2
    ciphers: str = ""
    direct: bool = True
    identity: CertIdentity = CertIdentity.CN


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    mode: UpstreamMode = UpstreamMode.DISABLE
    ca_file: str = ""  # empty: the system's default bundle
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""  # empty: the upstream host
    min_protocol: TLSVersion = TLSVersion.TLS1_2
    direct: bool = False

    @property
    def verifies_chain(self) -> bool:
        # libpq's require checks the chain when a root certificate is configured; so do we.
        return self.mode in (UpstreamMode.VERIFY_CA, UpstreamMode.VERIFY_FULL) or (
            self.mode is UpstreamMode.REQUIRE and bool(self.ca_file)
        )

    @property
    def verifies_host(self) -> bool:
        return self.mode is UpstreamMode.VERIFY_FULL


@dataclass(frozen=True, slots=True)
class TLSSettings:
    client: ClientTLS = ClientTLS()
    upstream: UpstreamTLS = UpstreamTLS()


class _Problems:
    def __init__(self) -> None:
        self.items: list[SourceProblem] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(SourceProblem("", 0, 0, message, key))

    def readable(self, key: str, path: str) -> bool:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            self.add(key, f"cannot read {path}: {exc.strerror or exc}")
            return False
        return True

    def private_key(self, key: str, path: str) -> None:
        if not self.readable(key, path):
            return
        info = os.stat(path)
        # PostgreSQL's own rule for ssl_key_file: 0600 or less, or 0640 or less if root owns it.
        allowed = 0o640 if info.st_uid == 0 else 0o600
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~allowed:
            self.add(
                key,
                f"private key file {path} has group or world access (mode {mode:04o}); "
                "it must be u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root",
            )


def _client(cfg: Config, problems: _Problems) -> ClientTLS:
    settings = ClientTLS(
        mode=ClientMode(cfg["client_tls.mode"]),
        cert_file=cfg["client_tls.cert_file"],
        key_file=cfg["client_tls.key_file"],
        ca_file=cfg["client_tls.ca_file"],
        min_protocol=TLSVersion(cfg["client_tls.min_protocol"]),
        ciphers=cfg["client_tls.ciphers"],
        direct=cfg["client_tls.direct"],
        identity=CertIdentity(cfg["client_tls.identity"]),
    )
    files = {
        "client_tls.cert_file": settings.cert_file,
        "client_tls.key_file": settings.key_file,
        "client_tls.ca_file": settings.ca_file,
    }
    if not settings.mode.offers_tls:
        for key, value in files.items():
            if value:
                problems.add(
                    key, "is set but client_tls.mode is disable; choose a mode such as require"
                )
        return settings
    for key in ("client_tls.cert_file", "client_tls.key_file"):
        if not files[key]:
            problems.add(key, f"client_tls.mode {settings.mode.value} needs a certificate and key")
    if settings.cert_file:
        problems.readable("client_tls.cert_file", settings.cert_file)
    if settings.key_file:
        problems.private_key("client_tls.key_file", settings.key_file)
    if settings.mode.requires_cert and not settings.ca_file:
        problems.add(
            "client_tls.ca_file",
            f"client_tls.mode {settings.mode.value} checks client certificates: "
            "it needs the CA bundle they chain to",
        )
    if settings.ca_file:
        problems.readable("client_tls.ca_file", settings.ca_file)
    return settings


def _upstream(cfg: Config, problems: _Problems) -> UpstreamTLS:
    settings = UpstreamTLS(
        mode=UpstreamMode(cfg["upstream_tls.mode"]),
        ca_file=cfg["upstream_tls.ca_file"],
        cert_file=cfg["upstream_tls.cert_file"],
        key_file=cfg["upstream_tls.key_file"],
        server_name=cfg["upstream_tls.server_name"],
        min_protocol=TLSVersion(cfg["upstream_tls.min_protocol"]),
        direct=cfg["upstream_tls.direct"],
    )
    optional = {
        "upstream_tls.ca_file": settings.ca_file,
        "upstream_tls.cert_file": settings.cert_file,
        "upstream_tls.key_file": settings.key_file,
        "upstream_tls.server_name": settings.server_name,
        "upstream_tls.direct": settings.direct,
    }
    if not settings.mode.attempts_tls:
        for key, value in optional.items():
            if value:
                problems.add(
                    key,
                    "is set but upstream_tls.mode is disable; use upstream_tls.mode: verify-full",
                )
        return settings
    if cfg.upstream.unix_path and settings.mode.requires_tls:
        problems.add(
            "upstream_tls.mode",
            f"{settings.mode.value} cannot be met: the upstream is a Unix socket "
            f"({cfg.upstream}) and PostgreSQL offers no TLS there",
        )
    if settings.direct and not settings.mode.requires_tls:
        problems.add(
            "upstream_tls.direct",
            "direct TLS has no plaintext fallback: it needs upstream_tls.mode "
            "require, verify-ca or verify-full (as libpq's sslnegotiation=direct does)",
        )
    if bool(settings.cert_file) != bool(settings.key_file):
        problems.add(
            "upstream_tls.cert_file" if not settings.cert_file else "upstream_tls.key_file",
            "a client certificate needs both upstream_tls.cert_file and upstream_tls.key_file",
        )
    if settings.cert_file:
        problems.readable("upstream_tls.cert_file", settings.cert_file)
    if settings.key_file:
        problems.private_key("upstream_tls.key_file", settings.key_file)
    if settings.ca_file:
        problems.readable("upstream_tls.ca_file", settings.ca_file)
    return settings


def _auth(cfg: Config, client: ClientTLS, problems: _Problems) -> None:
    mode = cfg["auth.mode"]
    if mode == "cert" and not client.mode.requires_cert:
        problems.add(
            "auth.mode",
            "cert authentication needs verified client certificates: "
            "client_tls.mode verify-ca or verify-full",
        )
    if mode == "proxy" and not cfg["auth.users_file"] and not cfg["auth.auth_user"]:
        problems.add(
            "auth.users_file",
            "auth.mode proxy needs a users file (pgwarden users add) or auth.auth_user",
        )
    if mode != "proxy" and cfg["auth.auth_user"]:
        problems.add("auth.auth_user", f"is set but auth.mode is {mode}; only proxy reads it")
    if cfg["auth.auth_user"] and not cfg["auth.passfile"]:
        problems.add(
            "auth.passfile",
            "auth.auth_user needs its password in auth.passfile (.pgpass format)",
        )
    if mode != "cert" and cfg["auth.ident_file"]:
        problems.add("auth.ident_file", f"is set but auth.mode is {mode}; only cert reads it")
    if bool(cfg["auth.ident_file"]) != bool(cfg["auth.ident_map"]):
        problems.add(
            "auth.ident_map",
            "auth.ident_file and auth.ident_map go together (the file, and the map in it)",
        )
    if (
        mode == "proxy"
        and tuple(cfg["auth.client_methods"]) == ("password",)
        and client.mode is ClientMode.DISABLE
        and not cfg["auth.cleartext_without_tls"]
    ):
        problems.add(
            "auth.client_methods",
            "password (cleartext) is only asked over TLS and client_tls.mode is disable: "
            "no client could log in (add scram-sha-256, or turn client TLS on)",
        )
    if mode == "cert" and cfg["auth.ident_file"] and client.mode is ClientMode.VERIFY_FULL:
        problems.add(
            "client_tls.mode",
            "verify-full requires the certificate to name the user itself; with "
            "auth.ident_file the map decides, so use verify-ca",
        )
    if mode != "proxy" and cfg["auth.users_file"]:
        problems.add("auth.users_file", f"is set but auth.mode is {mode}; it is only read by proxy")
    if mode == "passthrough" and cfg["auth.passfile"]:
        problems.add(
            "auth.passfile",
            "is set but auth.mode is passthrough: the server checks the client's own "
            "password; it is only read by proxy and cert",
        )


def load(cfg: Config) -> TLSSettings:
    """The TLS settings of ``cfg``; raises :class:`ConfigError` listing every problem."""
    problems = _Problems()
    settings = TLSSettings(_client(cfg, problems), _upstream(cfg, problems))
    _auth(cfg, settings.client, problems)
    if problems.items:
        raise ConfigError(problems.items)
    return settings
