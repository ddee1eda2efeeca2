"""pgwarden logging in to PostgreSQL with SCRAM-SHA-256 (the upstream leg), sans-IO.

Used when pgwarden authenticated the client itself (``auth.mode: proxy`` or ``cert``) and
must now prove the role to the server with credentials it holds: a password, or the
client's own key recovered from its proof (:meth:`ScramServer.upstream_keys`; the server
must hold the identical secret, as with PgBouncer's auth_query pass-through).

Over TLS the exchange is bound (``SCRAM-SHA-256-PLUS``) to the server's certificate when the
server offers it, which PostgreSQL always does over TLS; ``channel_binding="require"``
refuses a server that does not, ``"disable"`` never binds (libpq's meanings).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from enum import Enum
from typing import Literal

from proxy.auth import scram
from proxy.auth.channel_binding import tls_server_end_point
from proxy.auth.scram import ClientKeys
from proxy.errors import AuthenticationError, BackendProtocolError
from proxy.wire import sasl

ChannelBinding = Literal["disable", "prefer", "require"]


class ClientPhase(Enum):
    START = "start"
    SENT_FIRST = "sent_first"
    SENT_FINAL = "sent_final"
    DONE = "done"


class ScramClient:
    """One SCRAM login to the server."""

    def __init__(
        self,
        *,
        password: str | None = None,
        keys: ClientKeys | None = None,
        server_cert: bytes | None = None,
        channel_binding: ChannelBinding = "prefer",
        nonce: str | None = None,
    ) -> None:
        """Exactly one of ``password`` and ``keys``. ``server_cert``: the server's DER
        certificate when the upstream leg is TLS (None in plaintext)."""
        if (password is None) == (keys is None):
            raise ValueError("give either a password or client keys")
        self._password = password
        self._keys = keys
        self._tls = server_cert is not None
        self._binding_data = tls_server_end_point(server_cert) if server_cert else None
        self._policy = channel_binding
        self._nonce = nonce or scram.new_nonce()
        self.phase = ClientPhase.START
        self.mechanism = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._auth_message = b""
        self._server_key = b""

    def initial_response(self, mechanisms: Sequence[bytes]) -> bytes:
        """From AuthenticationSASL's mechanism list → the SASLInitialResponse message."""
        offered = {m.decode("ascii", "replace") for m in mechanisms}
        can_bind = self._binding_data is not None and self._policy != "disable"
        if can_bind and scram.MECHANISM_PLUS in offered:
            self.mechanism = scram.MECHANISM_PLUS
            self._gs2_header = f"p={scram.CHANNEL_BINDING_TYPE},,"
        elif self._policy == "require":
            raise AuthenticationError(
                "channel binding is required, but the server did not offer an authentication "
                "method that supports channel binding",
                "08006",
            )
        elif scram.MECHANISM in offered:
            self.mechanism = scram.MECHANISM
            # "y": we could bind but the server did not offer it (a server that does offer
            # it over TLS then sees the downgrade); "n": we cannot bind.
            self._gs2_header = "y,," if can_bind else "n,,"
        else:
            raise AuthenticationError(
                f"the server offered no supported SASL mechanism ({', '.join(sorted(offered))})",
                "08006",
            )
        self._client_first_bare = f"n=,r={self._nonce}"
        self.phase = ClientPhase.SENT_FIRST
        first = (self._gs2_header + self._client_first_bare).encode()
        return sasl.encode_sasl_initial_response(self.mechanism, first)

    def continue_response(self, data: bytes) -> bytes:
        """From SASLContinue (server-first-message) → the SASLResponse message."""
        if self.phase is not ClientPhase.SENT_FIRST:
            raise BackendProtocolError("unexpected SASLContinue")
        try:
            server_first = data.decode("ascii")
            attributes = dict(scram.split_attributes(server_first, "server-first-message"))
            nonce, salt, iterations = attributes["r"], scram.unb64(attributes["s"]), attributes["i"]
        except (UnicodeDecodeError, KeyError, ValueError, AuthenticationError):
            raise BackendProtocolError("malformed SCRAM server-first-message") from None
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise BackendProtocolError("invalid SCRAM server nonce")
        if not iterations.isdigit() or not 0 < int(iterations) <= 10_000_000:
            raise BackendProtocolError("invalid SCRAM iteration count")
        keys = self._client_keys(salt, int(iterations))
        binding = self._gs2_header.encode()
        if self.mechanism == scram.MECHANISM_PLUS:
            assert self._binding_data is not None
            binding += self._binding_data
        without_proof = f"c={scram.b64(binding)},r={nonce}"
        self._auth_message = scram.auth_message(
            self._client_first_bare, server_first, without_proof
        )
        stored = scram.sha256(keys.client_key)
        proof = scram.xor(keys.client_key, scram.hmac256(stored, self._auth_message))
        self._server_key = keys.server_key
        self.phase = ClientPhase.SENT_FINAL
        return sasl.encode_sasl_response(f"{without_proof},p={scram.b64(proof)}".encode())

    def _client_keys(self, salt: bytes, iterations: int) -> ClientKeys:
        if self._password is not None:
            return scram.keys_from_password(self._password, salt, iterations)
        assert self._keys is not None
        if salt != self._keys.salt or iterations != self._keys.iterations:
            raise AuthenticationError(
                "the server's SCRAM secret for this role differs from pgwarden's (another salt "
                "or iteration count): give the role the secret from the users file with "
                "ALTER ROLE … PASSWORD '<secret>'",
                "28P01",
            )
        return self._keys

    def final(self, data: bytes) -> None:
        """Check SASLFinal: the server must prove it holds the secret too."""
        if self.phase is not ClientPhase.SENT_FINAL:
            raise BackendProtocolError("unexpected SASLFinal")
        text = data.decode("ascii", "replace")
        if not text.startswith("v="):
            raise BackendProtocolError("malformed SCRAM server-final-message")
        try:
            signature = scram.unb64(text[2:].split(",", 1)[0])
        except ValueError:
            raise BackendProtocolError("malformed SCRAM server-final-message") from None
        expected = scram.hmac256(self._server_key, self._auth_message)
        if not hmac.compare_digest(signature, expected):
            raise BackendProtocolError("the server's SCRAM signature is invalid")
        self.phase = ClientPhase.DONE
