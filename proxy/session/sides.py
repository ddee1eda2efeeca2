"""The asyncio protocols of a session's two sockets: callbacks forwarded to the session."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast

from proxy.wire import constants as c

if TYPE_CHECKING:
    from proxy.session.adapter import Session

logger = logging.getLogger("pgwarden.session")


class Side(asyncio.Protocol):
    """One leg of a session (the client's socket, or the server's)."""

    def __init__(self, session: Session, is_client: bool) -> None:
        self.session = session
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self.session.client_connected(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            if self.is_client:
                self.session.client_data(data)
            else:
                self.session.server_data(data)
        except Exception:
            # A bug must cost this one session, never the process or another client.
            logger.exception("session %s: internal error", self.session.session_id)
            self.session.fatal(
                c.SQLSTATE_INTERNAL_ERROR, "pgwarden internal error", reason="internal_error"
            )

    def eof_received(self) -> bool | None:
        # A client that half-closes after its last request still gets the replies, as from
        # PostgreSQL; the server leg closes normally (connection_lost follows).
        return self.session.client_eof() if self.is_client else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_client:
            self.session.client_lost(exc)
        else:
            self.session.server_lost(exc)

    def pause_writing(self) -> None:
        self.session.peer_full(self.is_client, True)

    def resume_writing(self) -> None:
        self.session.peer_full(self.is_client, False)
