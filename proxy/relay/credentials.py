"""What pgwarden checks logins against in ``auth.mode`` proxy and cert, as loaded from the
configuration at start-up and again on SIGHUP / ``POST /reload``: the users file, the
certificate → role map, the ``auth_query`` lookup, and passfile passwords for the upstream
login."""

from __future__ import annotations

from collections.abc import Callable

from proxy.auth import identmap, passfile
from proxy.auth import users as users_file
from proxy.auth.authquery import AuthQuery, AuthQuerySettings, Connect
from proxy.auth.password import Verifier
from proxy.auth.scram import DEFAULT_ITERATIONS
from proxy.config import Config, Upstream
from proxy.relay.localauth import MD5, PASSWORD, LocalAuthSettings
from proxy.tls.settings import CertIdentity


def load_users(cfg: Config) -> users_file.UsersFile | None:
    if cfg["auth.mode"] != "proxy" or not cfg["auth.users_file"]:
        return None
    methods = cfg["auth.client_methods"]
    return users_file.load(cfg["auth.users_file"], allow_md5=MD5 in methods or PASSWORD in methods)


def load_settings(cfg: Config) -> LocalAuthSettings:
    """The ``auth.*`` settings with the ident map read (ConfigError naming its problems)."""
    path = cfg["auth.ident_file"] if cfg["auth.mode"] == "cert" else ""
    ident = identmap.load(path, cfg["auth.ident_map"]) if path else None
    return LocalAuthSettings(
        methods=tuple(cfg["auth.client_methods"]),
        cleartext_without_tls=cfg["auth.cleartext_without_tls"],
        identity=CertIdentity(cfg["client_tls.identity"]),
        ident=ident,
        ident_map=cfg["auth.ident_map"],
    )


def passfile_password(
    source: passfile.Passfile | None, upstream: Upstream, database: str, user: str
) -> str | None:
    """The auth.passfile password for pgwarden's own upstream login as ``user``."""
    if source is None:
        return None
    host = "localhost" if upstream.unix_path else upstream.host
    return source.password(host, upstream.port, database, user)


def make_auth_query(
    cfg: Config, connect: Connect, password_for: Callable[[str, str], str | None]
) -> AuthQuery | None:
    if cfg["auth.mode"] != "proxy" or not cfg["auth.auth_user"]:
        return None
    settings = AuthQuerySettings(
        query=cfg["auth.auth_query"],
        auth_user=cfg["auth.auth_user"],
        dbname=cfg["auth.auth_dbname"],
        cache_seconds=cfg["auth.auth_query_cache"],
        timeout=cfg["limits.connect_timeout"] * 2,
    )
    return AuthQuery(settings, connect, password_for)


async def verifier_for(
    users: users_file.UsersFile | None, query: AuthQuery | None, database: str, user: str
) -> tuple[Verifier | None, int]:
    """The user's secret (the users file first, then auth_query) and the iteration count a
    mock exchange uses. Raises AuthQueryError when the lookup cannot be made."""
    iterations = users.typical_iterations if users is not None else DEFAULT_ITERATIONS
    verifier = users.verifier(user) if users is not None else None
    if verifier is None and query is not None:
        verifier = await query.lookup(database, user)
    return verifier, iterations
