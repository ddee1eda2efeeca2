"""Who is running a statement: the identity every audit event and policy decision carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class IdentitySource(Enum):
    """Where the end identity (who is behind the database role) came from. Only the first
    two are proven to pgwarden; ``client_supplied`` is whatever the client chose to say."""

    CERTIFICATE = "certificate"  # a verified client certificate (auth.mode cert)
    PROXY_USER = "proxy_user"  # the user pgwarden authenticated (auth.mode proxy)
    CLIENT_SUPPLIED = "client_supplied"  # identity.parameter: a startup parameter the client set


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    database: str
    application_name: str = ""
    client_addr: str = ""  # IP address, or "unix" for a Unix-socket client
    client_port: int | None = None
    session_id: str = ""
    # Who is behind the database role when pgwarden knows more (the client certificate's
    # subject, the proxy user, a trusted startup parameter); '' when the role is all there is.
    # Fixed at login: a client changing application_name later does not change it.
    end_identity: str = ""
    identity_source: IdentitySource | None = None  # set exactly when end_identity is
