"""Who is running a statement: the identity every audit event and policy decision carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    database: str
    application_name: str = ""
    client_addr: str = ""  # IP address, or "unix" for a Unix-socket client
    client_port: int | None = None
    session_id: str = ""
    # Who is behind the database role when pgwarden knows more (the client certificate's
    # subject in auth.mode cert); '' when the role is all there is.
    end_identity: str = ""
