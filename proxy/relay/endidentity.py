"""The end identity of a session — who is behind the database role — decided once at login.

Three sources, in order of trust (docs/tls.md, "Identity"):

* ``certificate``: the verified client certificate's subject (``auth.mode: cert``);
* ``proxy_user``: the user pgwarden authenticated, when it maps to another role;
* ``client_supplied``: a startup parameter named by ``identity.parameter`` (``application_name``
  or a setting such as ``app.end_user``, given as a startup key or ``options=-c``), taken only
  when configured, only from ``identity.client_addrs`` when those are set, and only when the
  login proved no identity of its own. The client chose it: it is marked as such.

The identity is fixed at login. A later ``SET application_name`` does not change it; when
the new value would claim someone else, the session records an ``identity_claim_ignored``
event instead (:func:`changed_claim`).

With ``identity.propagate: guc`` the upstream startup packet carries ``pgwarden.identity``
and ``pgwarden.identity_source`` (custom settings PostgreSQL accepts from a startup packet);
the client's own attempts to set them are stripped from the packet (:func:`upstream_packet`)
and refused as statements by the gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from proxy.errors import ConfigError, SourceProblem
from proxy.identity import Identity, IdentitySource
from proxy.policy.conditions import IPNetwork, addr_in, parse_networks
from proxy.relay.handshake import Login, startup_setting, without_settings
from proxy.sql.walker import IDENTITY_SETTINGS

if TYPE_CHECKING:
    from proxy.config import Config

IDENTITY_GUC = "pgwarden.identity"
SOURCE_GUC = "pgwarden.identity_source"
MAX_LENGTH = 255  # a claimed identity longer than this is refused, never cut


class Propagation(Enum):
    NONE = "none"
    GUC = "guc"  # pgwarden.identity / pgwarden.identity_source in the startup packet


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    source: str = ""  # identity.parameter: '' (off), application_name, or a setting name
    pattern: re.Pattern[str] | None = None
    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False
    propagate: Propagation = Propagation.NONE

    @property
    def restricted(self) -> bool:
        return bool(self.networks) or self.unix


@dataclass(frozen=True, slots=True)
class Claim:
    """What a client's startup parameter says about who it is."""

    identity: str = ""  # '' when it names nobody (or was refused)
    refused: str = ""  # why a value that was there was not taken


_loaded: tuple[object, IdentitySettings] | None = None


def load(cfg: Config) -> IdentitySettings:
    """The ``identity.*`` settings of ``cfg``; raises ConfigError listing every problem."""
    global _loaded
    if _loaded is not None and _loaded[0] is cfg.values:
        return _loaded[1]
    problems: list[SourceProblem] = []
    source = cfg["identity.parameter"]
    pattern_text = cfg["identity.pattern"]
    if source == "application_name" and not pattern_text:
        problems.append(
            SourceProblem(
                "",
                0,
                0,
                "identity.parameter application_name needs identity.pattern (which part of the "
                "application name is the person, e.g. '^billing/(?P<identity>[^/]+)$'): "
                "every client sets an application name",
                "identity.pattern",
            )
        )
    if not source:
        for key in ("identity.pattern", "identity.client_addrs"):
            if cfg[key]:
                problems.append(
                    SourceProblem("", 0, 0, "is set but identity.parameter is empty", key)
                )
    networks, unix, bad = parse_networks(cfg["identity.client_addrs"])
    for _index, why in bad:
        problems.append(SourceProblem("", 0, 0, why, "identity.client_addrs"))
    if problems:
        raise ConfigError(problems)
    settings = IdentitySettings(
        source,
        re.compile(pattern_text) if pattern_text else None,
        tuple(networks),
        unix,
        Propagation(cfg["identity.propagate"]),
    )
    _loaded = (cfg.values, settings)
    return settings


def claim_value(settings: IdentitySettings, value: str) -> Claim:
    """The identity ``value`` (of identity.parameter) names, by identity.pattern."""
    pattern = settings.pattern
    found = value
    if pattern is not None:
        match = pattern.search(value)
        if match is None:
            return Claim()
        if "identity" in pattern.groupindex:
            found = match.group("identity") or ""
        elif pattern.groups:
            found = match.group(1) or ""
        else:
            found = match.group(0)
    if not found:
        return Claim()
    if len(found) > MAX_LENGTH:
        return Claim(refused=f"longer than {MAX_LENGTH} characters")
    if not (found.isascii() and found.isprintable()):
        # PostgreSQL rewrites such application names (15: '?', 16+: \\x escapes); an
        # identity must read the same in pgwarden's trail and on every server.
        return Claim(refused="not printable ASCII")
    return Claim(found)


def claim(settings: IdentitySettings, login: Login, client_addr: str) -> Claim:
    """The identity a client names at login through identity.parameter (Claim() when off)."""
    if not settings.source:
        return Claim()
    value = startup_setting(login.params, settings.source)
    if value is None:
        return Claim()
    if settings.restricted and not _from_listed(settings, client_addr):
        return Claim(refused=f"client address {client_addr} is not in identity.client_addrs")
    return claim_value(settings, value)


def _from_listed(settings: IdentitySettings, client_addr: str) -> bool:
    return addr_in(client_addr, settings.networks, settings.unix)


def with_claim(identity: Identity, found: Claim) -> Identity:
    if not found.identity:
        return identity
    return replace(
        identity, end_identity=found.identity, identity_source=IdentitySource.CLIENT_SUPPLIED
    )


def upstream_packet(
    login: Login, settings: IdentitySettings, identity: Identity
) -> tuple[bytes, bool]:
    """The startup packet for the server, and whether the client tried to set one of
    pgwarden's own settings (stripped). Without propagation it is the login's own packet."""
    if settings.propagate is Propagation.NONE:
        return login.upstream_packet(), False
    params, stripped = without_settings(login.params, IDENTITY_SETTINGS)
    source = identity.identity_source
    params += (
        (IDENTITY_GUC, identity.end_identity),
        (SOURCE_GUC, source.value if source is not None and identity.end_identity else ""),
    )
    return replace(login, params=params).upstream_packet(), stripped


def changed_claim(
    settings: IdentitySettings, identity: Identity, application_name: str
) -> str | None:
    """After login: the identity a new application_name would claim when that is not the
    session's (None: nothing to record). The session's identity stays what it was."""
    if settings.source != "application_name" or identity.identity_source not in (
        None,
        IdentitySource.CLIENT_SUPPLIED,
    ):
        return None
    if settings.restricted and not _from_listed(settings, identity.client_addr):
        return None
    found = claim_value(settings, application_name).identity
    return found if found != identity.end_identity else None


class SessionIdentity:
    """One session's end identity as its login proceeds; the session calls it at each step
    and copies the identity it returns (nothing here runs per statement)."""

    __slots__ = ("_claim", "_claimed", "_stripped", "settings")

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self._claim = Claim()
        self._claimed = ""  # the value a refused claim had (kept for the record)
        self._stripped = False

    def at_login(self, identity: Identity, login: Login) -> Identity:
        """The identity after the startup packet: a trusted parameter's claim, if any."""
        self._claim = found = claim(self.settings, login, identity.client_addr)
        if found.refused:
            value = startup_setting(login.params, self.settings.source) or ""
            self._claimed = value[:MAX_LENGTH]
        return with_claim(identity, found)

    def authenticated(
        self, identity: Identity, end_identity: str, source: IdentitySource | None
    ) -> Identity:
        """pgwarden proved who the client is (certificate, proxy user): that wins over
        whatever the client claimed."""
        if not end_identity:
            return identity
        if self._claim.identity:
            self._claimed = self._claim.identity
            self._claim = Claim(refused=f"the login proved an identity ({source and source.value})")
        return replace(identity, end_identity=end_identity, identity_source=source)

    def packet(self, login: Login, identity: Identity) -> bytes:
        """The startup packet for the server (pgwarden.identity when propagated)."""
        data, stripped = upstream_packet(login, self.settings, identity)
        self._stripped = self._stripped or stripped
        return data

    def start_fields(self) -> dict[str, object]:
        """What ``session_start`` says about the identity beyond the common fields."""
        out: dict[str, object] = {}
        if self._claim.refused:
            out["identity_claim_refused"] = self._claim.refused
            out["identity_claimed"] = self._claimed
        if self._stripped:
            out["identity_settings_stripped"] = True  # the client tried to set pgwarden's own
        return out

    def application_name_changed(self, identity: Identity, value: str) -> dict[str, object] | None:
        """Fields of an ``identity_claim_ignored`` event when a new application_name (after
        login) would name someone else; None when there is nothing to record."""
        found = changed_claim(self.settings, identity, value)
        if found is None:
            return None
        return {"claimed": found, "application_name": value}
