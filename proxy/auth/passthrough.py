"""``auth.mode: passthrough``: the server authenticates; pgwarden relays the exchange.

Channel binding cannot survive a relay: a client binds to the certificate *it* sees
(pgwarden's), the server checks against its own. So pgwarden never lets a client pick
``SCRAM-SHA-256-PLUS``: :func:`client_offer` removes it from the server's offer. With TLS on
both legs that is still not enough for libpq's default ``channel_binding=prefer``: such a
client answers "I can bind but you did not offer it" (gs2 flag ``y``), and the server, which
does offer binding over TLS, rejects that as a downgrade ("SCRAM channel binding negotiation
error"). :func:`explain_error` adds a hint saying what to do to that error on its way to
the client. docs/tls.md has the full matrix.
"""

from __future__ import annotations

from proxy.auth.scram import MECHANISM_PLUS
from proxy.wire import messages as m

_PLUS = MECHANISM_PLUS.encode()
_NEGOTIATION_ERROR = b"MSCRAM channel binding negotiation error\x00"
_HINT = (
    b"HThe login went through pgwarden, which relays authentication to the server "
    b"(auth.mode passthrough) and cannot relay channel binding. Connect with "
    b"channel_binding=disable, or run pgwarden with auth.mode proxy.\x00"
)


def client_offer(body: bytes) -> bytes:
    """The AuthenticationSASL message (whole, header included) to send the client for the
    server's AuthenticationSASL ``body``: the same list without SCRAM-SHA-256-PLUS."""
    return m.encode_sasl_mechanisms([x for x in m.sasl_mechanisms(body) if x != _PLUS])


def explain_error(body: bytes) -> bytes | None:
    """For a server ErrorResponse ``body``: the same error with pgwarden's hint added when it
    is the channel-binding downgrade error and carries no hint of its own; else None."""
    if _NEGOTIATION_ERROR not in body or not body.endswith(b"\x00"):
        return None
    fields = body[:-1].split(b"\x00")
    if any(f.startswith(b"H") for f in fields):
        return None
    return body[:-1] + _HINT + b"\x00"
