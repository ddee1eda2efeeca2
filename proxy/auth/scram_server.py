"""pgwarden authenticating a client with SCRAM-SHA-256 (``auth.mode: proxy``), sans-IO.

The exchange is PostgreSQL's, message for message and error for error:

1. :meth:`ScramServer.sasl_request` — ``AuthenticationSASL`` offering ``SCRAM-SHA-256-PLUS``
   (only when the client leg is TLS: bound to pgwarden's own certificate) and
   ``SCRAM-SHA-256``;
2. :meth:`ScramServer.initial_response` with the client's ``SASLInitialResponse`` —
   ``SASLContinue`` (server-first-message);
3. :meth:`ScramServer.final_response` with the ``SASLResponse`` — ``SASLFinal``; then the
   caller sends ``AuthenticationOk``.

Every refusal is an :class:`~proxy.errors.AuthenticationError` carrying PostgreSQL's SQLSTATE
and text. A user without a secret goes through a mock exchange (a salt derived from the name
and a process secret) and fails only at the proof, as PostgreSQL does, so the exchange does
not tell who exists.
"""

from __future__ import annotations

import hmac
import os
from enum import Enum

from proxy.auth import scram
from proxy.auth.channel_binding import tls_server_end_point
from proxy.auth.scram import ClientKeys, ScramSecret
from proxy.errors import AuthenticationError
from proxy.wire import constants as c
from proxy.wire import sasl

_MOCK_KEY = os.urandom(32)


class ScramPhase(Enum):
    OFFERED = "offered"  # AuthenticationSASL sent
    CHALLENGED = "challenged"  # server-first-message sent
    DONE = "done"  # proof checked, SASLFinal sent
    FAILED = "failed"


def password_failed(user: str) -> AuthenticationError:
    return AuthenticationError(f'password authentication failed for user "{user}"')


class ScramServer:
    """One client's SCRAM exchange, from PostgreSQL's side."""

    def __init__(
        self,
        user: str,
        secret: ScramSecret | None,
        *,
        server_cert: bytes | None = None,
        nonce: str | None = None,
        mock_iterations: int = scram.DEFAULT_ITERATIONS,
    ) -> None:
        """``secret`` None: unknown user (mock exchange). ``server_cert``: the DER
        certificate pgwarden presented on this TLS client leg, or None in plaintext.
        ``mock_iterations``: what known users' secrets use (``UsersFile.typical_iterations``),
        so the count does not tell unknown users apart."""
        self.user = user
        self._mock = secret is None
        self.secret = secret or self._mock_secret(user, mock_iterations)
        self._binding = tls_server_end_point(server_cert) if server_cert else None
        self._tls = server_cert is not None
        self._server_nonce = nonce or scram.new_nonce()
        self.phase = ScramPhase.OFFERED
        self._plus = False
        self._flag = ""
        self._gs2_header = ""
        self._client_nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self.client_key: bytes | None = None  # recovered from a valid proof

    @staticmethod
    def _mock_secret(user: str, iterations: int) -> ScramSecret:
        salt = scram.hmac256(_MOCK_KEY, user.encode())[: scram.SALT_LENGTH]
        return ScramSecret(iterations, salt, os.urandom(32), os.urandom(32))

    @property
    def mechanisms(self) -> list[str]:
        if self._binding is not None:
            return [scram.MECHANISM_PLUS, scram.MECHANISM]
        return [scram.MECHANISM]

    @property
    def mechanism(self) -> str:
        """The mechanism the client chose (after its SASLInitialResponse)."""
        return scram.MECHANISM_PLUS if self._plus else scram.MECHANISM

    def sasl_request(self) -> bytes:
        return sasl.authentication_sasl(self.mechanisms)

    def _fail(self, error: AuthenticationError) -> AuthenticationError:
        self.phase = ScramPhase.FAILED
        return error

    def initial_response(self, body: bytes) -> bytes:
        """The client's SASLInitialResponse body → the SASLContinue message to send."""
        if self.phase is not ScramPhase.OFFERED:
            raise self._fail(scram.malformed("Unexpected SASLInitialResponse."))
        initial = sasl.decode_sasl_initial_response(body)
        if initial.mechanism not in self.mechanisms:
            raise self._fail(
                AuthenticationError(
                    "client selected an invalid SASL authentication mechanism",
                    c.SQLSTATE_PROTOCOL_VIOLATION,
                )
            )
        if initial.data is None:
            raise self._fail(scram.malformed("The message is empty."))
        self._plus = initial.mechanism == scram.MECHANISM_PLUS
        try:
            text = initial.data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(scram.malformed("The message is not valid UTF-8.")) from None
        try:
            self._read_client_first(text)
        except AuthenticationError as exc:
            raise self._fail(exc) from None
        s = self.secret
        self._server_first = (
            f"r={self._client_nonce}{self._server_nonce},s={scram.b64(s.salt)},i={s.iterations}"
        )
        self.phase = ScramPhase.CHALLENGED
        return sasl.authentication_sasl_continue(self._server_first.encode())

    def _read_client_first(self, text: str) -> None:
        flag, sep, rest = text.partition(",")
        if not sep:
            raise scram.malformed("Comma expected.")
        if flag == "n":
            if self._plus:
                raise scram.malformed(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not "
                    "include channel binding data."
                )
        elif flag == "y":
            if self._plus:
                raise scram.malformed(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not "
                    "include channel binding data."
                )
            if self._tls and self._binding is not None:
                # A downgrade: someone removed -PLUS from our offer on the way.
                raise AuthenticationError(
                    "SCRAM channel binding negotiation error",
                    c.SQLSTATE_INVALID_AUTHORIZATION,
                    "The client supports SCRAM channel binding but thinks the server does not.  "
                    "However, this server does support channel binding.",
                )
        elif flag.startswith("p="):
            if not self._plus:
                raise scram.malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM "
                    "message includes channel binding data."
                )
            if flag[2:] != scram.CHANNEL_BINDING_TYPE:
                raise AuthenticationError(
                    f'unsupported SCRAM channel-binding type "{flag[2:]}"',
                    c.SQLSTATE_PROTOCOL_VIOLATION,
                )
        else:
            raise scram.malformed(f'Unexpected channel-binding flag "{flag[:1]}".')
        authzid, sep, bare = rest.partition(",")
        if not sep:
            raise scram.malformed("Comma expected.")
        if authzid:
            raise AuthenticationError(
                "client uses authorization identity, but it is not supported",
                c.SQLSTATE_FEATURE_NOT_SUPPORTED,
            )
        self._flag = flag
        self._gs2_header = f"{flag},,"
        attributes = scram.split_attributes(bare, "client-first-message")
        if attributes and attributes[0][0] == "m":
            raise AuthenticationError(
                "client requires an unsupported SCRAM extension", c.SQLSTATE_FEATURE_NOT_SUPPORTED
            )
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise scram.malformed("Expected the attributes n= and r= in client-first-message.")
        # The user name in the message is ignored: the startup packet's counts (PostgreSQL).
        nonce = attributes[1][1]
        if not scram.is_printable_nonce(nonce):
            raise scram.malformed("The client nonce contains non-printable characters.")
        self._client_nonce = nonce
        self._client_first_bare = bare

    def final_response(self, data: bytes) -> bytes:
        """The client's SASLResponse data → the SASLFinal message to send; the caller then
        sends ``sasl.authentication_ok()``. A wrong password raises 28P01."""
        if self.phase is not ScramPhase.CHALLENGED:
            raise self._fail(scram.malformed("Unexpected SASLResponse."))
        try:
            text = data.decode("utf-8")
            proof, auth_message = self._read_client_final(text)
        except UnicodeDecodeError:
            raise self._fail(scram.malformed("The message is not valid UTF-8.")) from None
        except AuthenticationError as exc:
            raise self._fail(exc) from None
        s = self.secret
        signature = scram.hmac256(s.stored_key, auth_message)
        client_key = scram.xor(proof, signature)
        if self._mock or not hmac.compare_digest(scram.sha256(client_key), s.stored_key):
            raise self._fail(password_failed(self.user))
        self.client_key = client_key
        self.phase = ScramPhase.DONE
        server_signature = scram.hmac256(s.server_key, auth_message)
        return sasl.authentication_sasl_final(f"v={scram.b64(server_signature)}".encode())

    def _read_client_final(self, text: str) -> tuple[bytes, bytes]:
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise scram.malformed("Malformed proof in client-final-message.")
        attributes = scram.split_attributes(without_proof, "client-final-message")
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise scram.malformed("Expected the attributes c= and r= in client-final-message.")
        binding = attributes[0][1]
        if self._plus:
            assert self._binding is not None
            expected = scram.b64(self._gs2_header.encode() + self._binding)
            if not hmac.compare_digest(binding.encode(), expected.encode()):
                raise AuthenticationError(
                    "SCRAM channel binding check failed", c.SQLSTATE_INVALID_AUTHORIZATION
                )
        elif binding != scram.b64(self._gs2_header.encode()):
            raise AuthenticationError(
                "unexpected SCRAM channel-binding attribute in client-final-message",
                c.SQLSTATE_PROTOCOL_VIOLATION,
            )
        if attributes[1][1] != self._client_nonce + self._server_nonce:
            raise AuthenticationError(
                "invalid SCRAM response", c.SQLSTATE_PROTOCOL_VIOLATION, "Nonce does not match."
            )
        try:
            proof = scram.unb64(proof_part)
        except ValueError:
            raise scram.malformed("Malformed proof in client-final-message.") from None
        if len(proof) != scram.KEY_LENGTH:
            raise scram.malformed("Malformed proof in client-final-message.")
        return proof, scram.auth_message(self._client_first_bare, self._server_first, without_proof)

    def upstream_keys(self) -> ClientKeys:
        """After success: the client's own key, to log in upstream with the same secret
        (works when the server holds the identical secret: same salt and iterations)."""
        if self.client_key is None:
            raise RuntimeError("the SCRAM exchange has not succeeded")
        s = self.secret
        return ClientKeys(self.client_key, s.server_key, s.salt, s.iterations)
