"""md5 and cleartext password authentication of clients (``auth.client_methods``), sans-IO.

PostgreSQL's two older methods, checked the way the server checks them:

* ``password`` (cleartext): the client sends its password; it is checked against a SCRAM
  secret by recomputing the keys from it with the secret's salt and iterations (PostgreSQL's
  ``scram_verify_plain_password``), or against an md5 entry by hashing it.
* ``md5``: the client sends ``"md5" + md5(md5(password + user) + salt)`` for a random 4-byte
  salt. Answering needs the stored ``md5(password + user)`` itself: a SCRAM secret holds only
  ``H(HMAC(SaltedPassword, "Client Key"))`` and ``HMAC(SaltedPassword, "Server Key")`` under a
  salt of its own, from which no md5 hash can be computed (that is what makes it a verifier).
  So md5 needs an md5 entry (``pgwarden users add NAME --md5``), which is as good as the
  password to anyone who reads it (it answers md5 challenges as it is).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from proxy.auth import scram
from proxy.auth.scram import ScramSecret
from proxy.auth.scram_server import password_failed
from proxy.errors import AuthenticationError
from proxy.wire import constants as c
from proxy.wire import messages as m

AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
_MD5 = re.compile(r"md5[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Md5Secret:
    """``"md5" + md5(password + user)``: PostgreSQL's md5 password entry."""

    digest: str

    @classmethod
    def parse(cls, text: str) -> Md5Secret:
        if not _MD5.fullmatch(text):
            raise ValueError("not an md5 secret (md5 followed by 32 lowercase hex digits)")
        return cls(text)

    def __str__(self) -> str:
        return self.digest


Verifier = ScramSecret | Md5Secret


def parse_verifier(text: str) -> Verifier:
    """A SCRAM or md5 secret in PostgreSQL's text form (``pg_authid.rolpassword``)."""
    if text.startswith("md5"):
        return Md5Secret.parse(text)
    return ScramSecret.parse(text)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_md5(password: str, user: str) -> Md5Secret:
    return Md5Secret("md5" + md5_hex((password + user).encode()))


def md5_response(secret: Md5Secret, salt: bytes) -> str:
    """The answer to an md5 challenge with ``salt``: what libpq sends, computed from the
    stored hash (so the hash answers as well as the password)."""
    return "md5" + md5_hex(secret.digest[3:].encode() + salt)


def md5_password(password: str, user: str, salt: bytes) -> str:
    """The answer to AuthenticationMD5Password, as libpq computes it."""
    return md5_response(make_md5(password, user), salt)


def cleartext_request() -> bytes:
    return m.message(ord("R"), AUTH_CLEARTEXT.to_bytes(4, "big"))


def md5_request(salt: bytes) -> bytes:
    return m.message(ord("R"), AUTH_MD5.to_bytes(4, "big") + salt)


def new_salt() -> bytes:
    return os.urandom(4)


def read_password_message(body: bytes) -> str | None:
    """A PasswordMessage body → its text (None: not UTF-8), refused as PostgreSQL's
    recv_password_packet does."""
    if not body or body.find(b"\x00") != len(body) - 1:
        raise AuthenticationError("invalid password packet size", c.SQLSTATE_PROTOCOL_VIOLATION)
    if len(body) == 1:
        raise AuthenticationError("empty password returned by client")
    try:
        return body[:-1].decode("utf-8")
    except UnicodeDecodeError:
        # pgwarden's secrets are made from text; bytes that are not UTF-8 match none.
        return None


def verify_cleartext(
    password: str, user: str, verifier: Verifier | None, mock_iterations: int
) -> bool:
    """Whether ``password`` is the one ``verifier`` was made from. An unknown user (None)
    costs the same PBKDF2 rounds as a known one, so the time taken does not tell them
    apart."""
    if verifier is None:
        scram.keys_from_password(password, b"pgwarden-mock-salt", mock_iterations)
        return False
    if isinstance(verifier, ScramSecret):
        keys = scram.keys_from_password(password, verifier.salt, verifier.iterations)
        stored = scram.sha256(keys.client_key)
        return hmac.compare_digest(stored, verifier.stored_key) and hmac.compare_digest(
            keys.server_key, verifier.server_key
        )
    expected = make_md5(password, user).digest
    return hmac.compare_digest(expected.encode(), verifier.digest.encode())


def check_cleartext(
    body: bytes,
    user: str,
    verifier: Verifier | None,
    mock_iterations: int = scram.DEFAULT_ITERATIONS,
) -> str:
    """The client's cleartext PasswordMessage → the password when it is right; else 28P01
    with PostgreSQL's text."""
    password = read_password_message(body)
    if password is None or not verify_cleartext(password, user, verifier, mock_iterations):
        raise password_failed(user)
    return password


def check_md5(body: bytes, user: str, verifier: Md5Secret | None, salt: bytes) -> None:
    """The client's answer to an md5 challenge with ``salt``; 28P01 unless it is right."""
    answer = read_password_message(body)
    if (
        answer is None
        or verifier is None
        or not hmac.compare_digest(answer.encode(), md5_response(verifier, salt).encode())
    ):
        raise password_failed(user)
