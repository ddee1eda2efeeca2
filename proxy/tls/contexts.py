"""SSLContext builders for both legs and the holder that swaps them on reload.

A context is built completely (certificates read, key checked against the certificate, CA
bundle loaded) before it is used, so a bad file is a :class:`ConfigError` at start-up and a
failed reload that keeps the old context, never a connection that fails half-way.
Sessions take ``holder.current`` once, when they start: a reload changes what *new*
connections get and leaves running TLS sessions alone (they keep their own reference).
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ConfigError, SourceProblem
from proxy.tls.settings import (
    ClientTLS,
    TLSSettings,
    TLSVersion,
    UpstreamTLS,
)

# PostgreSQL 17's ALPN protocol name (required for direct TLS, checked when offered).
ALPN_PROTOCOL = "postgresql"

_VERSIONS = {
    TLSVersion.TLS1_2: ssl.TLSVersion.TLSv1_2,
    TLSVersion.TLS1_3: ssl.TLSVersion.TLSv1_3,
}


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError([SourceProblem("", 0, 0, message, key)])


def _reason(exc: ssl.SSLError | OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


def _harden(ctx: ssl.SSLContext, min_protocol: TLSVersion) -> None:
    ctx.minimum_version = _VERSIONS[min_protocol]
    # PostgreSQL disables renegotiation and compression (CRIME); so do we.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN_PROTOCOL])


def _load_chain(ctx: ssl.SSLContext, key: str, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise _fail(
            key, f"cannot load certificate {cert_file} with key {key_file}: {_reason(exc)}"
        ) from None


def _load_ca(ctx: ssl.SSLContext, key: str, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise _fail(key, f"cannot load CA bundle {ca_file}: {_reason(exc)}") from None


def client_context(settings: ClientTLS) -> ssl.SSLContext:
    """The server-side context pgwarden presents to its clients."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, settings.min_protocol)
    if settings.ciphers:
        try:
            ctx.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise _fail("client_tls.ciphers", f"no cipher matches {settings.ciphers!r}") from None
    _load_chain(ctx, "client_tls.cert_file", settings.cert_file, settings.key_file)
    if settings.ca_file:
        _load_ca(ctx, "client_tls.ca_file", settings.ca_file)
        # Without a verify mode a certificate is still asked for, so auth.mode=cert and the
        # audit can use one when the client has it; verify modes make it mandatory.
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.mode.requires_cert else ssl.CERT_OPTIONAL
    return ctx


def upstream_context(settings: UpstreamTLS) -> ssl.SSLContext:
    """The client-side context pgwarden uses towards PostgreSQL."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, settings.min_protocol)
    if settings.verifies_chain:
        ctx.check_hostname = settings.verifies_host
        ctx.verify_mode = ssl.CERT_REQUIRED
        if settings.ca_file:
            _load_ca(ctx, "upstream_tls.ca_file", settings.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            if not ctx.get_ca_certs() and not _default_paths_exist():
                raise _fail(
                    "upstream_tls.ca_file",
                    f"upstream_tls.mode {settings.mode.value} needs CA certificates and "
                    "the system has no bundle; set upstream_tls.ca_file",
                )
    else:
        # prefer / require without a CA file: encrypted, but not authenticated (libpq's
        # meaning of these modes). Documented as such.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        _load_chain(ctx, "upstream_tls.cert_file", settings.cert_file, settings.key_file)
    return ctx


def _default_paths_exist() -> bool:
    # OpenSSL loads a hashed CA directory lazily, so get_ca_certs() can be empty although
    # verification will work; accept a directory that exists.
    paths = ssl.get_default_verify_paths()
    return bool(
        (paths.cafile and os.path.isfile(paths.cafile))
        or (paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath))
    )


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """One generation of contexts; ``None`` where a leg has TLS off."""

    settings: TLSSettings
    client: ssl.SSLContext | None
    upstream: ssl.SSLContext | None
    loaded_at: float
    # The certificate pgwarden presents to clients (DER), for SCRAM-SHA-256-PLUS: Python's
    # SSLObject does not expose its own certificate, so it is read with the context.
    client_cert_der: bytes | None = None


def first_certificate(path: str) -> bytes:
    """The first (leaf) certificate of a PEM chain file, as DER."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        raise ValueError(f"no PEM certificate in {path}")
    return ssl.PEM_cert_to_DER_cert(text[begin : end + len(end_marker)])


def build(settings: TLSSettings, now: float | None = None) -> TLSContexts:
    """Both contexts from ``settings``; raises :class:`ConfigError` on any bad file."""
    problems: list[SourceProblem] = []
    client = upstream = None
    if settings.client.mode.offers_tls:
        try:
            client = client_context(settings.client)
        except ConfigError as exc:
            problems += exc.problems
    if settings.upstream.mode.attempts_tls:
        try:
            upstream = upstream_context(settings.upstream)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    own = first_certificate(settings.client.cert_file) if client is not None else None
    return TLSContexts(settings, client, upstream, time.time() if now is None else now, own)


class TLSHolder:
    """The current :class:`TLSContexts`; :meth:`reload` re-reads the files and swaps.

    Certificate rotation (certbot, cert-manager) rewrites the files in place; SIGHUP or
    ``POST /reload`` then makes new connections use them. A reload that fails keeps the
    contexts in force and says why.
    """

    def __init__(self, contexts: TLSContexts) -> None:
        self._current = contexts
        self._lock = threading.Lock()  # reload runs in an executor thread
        self.reloads = 0
        self.reload_failures = 0

    @classmethod
    def from_settings(cls, settings: TLSSettings) -> TLSHolder:
        return cls(build(settings))

    @property
    def current(self) -> TLSContexts:
        return self._current

    def reload(self) -> tuple[str, ...]:
        """Rebuild from the same settings; the problems found (empty: swapped)."""
        with self._lock:
            try:
                fresh = build(self._current.settings)
            except ConfigError as exc:
                self.reload_failures += 1
                return tuple(str(p) for p in exc.problems)
            self._current = fresh
            self.reloads += 1
            return ()
