"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL does it: keys, secrets, message parts.

A *secret* (PostgreSQL calls it a verifier) is what ``pg_authid.rolpassword`` holds:
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts). It cannot log
in by itself; it checks a proof. Passwords are normalised with SASLprep first, falling back
to the raw text when SASLprep refuses it, exactly as PostgreSQL's ``pg_saslprep`` caller does,
so a secret made here verifies against the server's and the other way round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass

from proxy.errors import AuthenticationError
from proxy.wire import constants as c

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LENGTH = 16
NONCE_LENGTH = 18  # raw bytes before base64, as PostgreSQL's SCRAM_RAW_NONCE_LEN
KEY_LENGTH = 32

_SECRET = re.compile(
    r"SCRAM-SHA-256\$(?P<i>[0-9]+):(?P<salt>[A-Za-z0-9+/=]+)\$"
    r"(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def saslprep(text: str) -> str | None:
    """RFC 4013 SASLprep (stored strings: unassigned code points refused); None if refused."""
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    out = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(ch) for ch in out for check in prohibited):
        return None
    if any(stringprep.in_table_d1(ch) for ch in out):
        if any(stringprep.in_table_d2(ch) for ch in out):
            return None
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            return None
    return out


def normalize_password(password: str) -> bytes:
    """The bytes PostgreSQL hashes for ``password``."""
    prepared = saslprep(password)
    return (prepared if prepared is not None else password).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """A SCRAM-SHA-256 secret (verifier): enough to check a proof, never to make one."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> ScramSecret:
        """From PostgreSQL's text form; ValueError with the reason otherwise."""
        match = _SECRET.fullmatch(text.strip())
        if not match:
            raise ValueError(
                "not a SCRAM-SHA-256 secret (SCRAM-SHA-256$<iterations>:<salt>$<key>:<key>)"
            )
        try:
            salt, stored, server = (unb64(match.group(g)) for g in ("salt", "stored", "server"))
        except binascii.Error:
            raise ValueError("invalid base64 in SCRAM secret") from None
        iterations = int(match.group("i"))
        if iterations < 1 or len(stored) != KEY_LENGTH or len(server) != KEY_LENGTH or not salt:
            raise ValueError("invalid SCRAM secret (iterations, salt or key length)")
        return cls(iterations, salt, stored, server)

    def __str__(self) -> str:
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}$"
            f"{b64(self.stored_key)}:{b64(self.server_key)}"
        )


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What proves an identity to a server: from a password, or recovered from a client's
    proof (PgBouncer-style pass-through of SCRAM, :attr:`ScramServer.client_key`)."""

    client_key: bytes
    server_key: bytes
    salt: bytes
    iterations: int


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)


def keys_from_password(password: str, salt: bytes, iterations: int) -> ClientKeys:
    salted = salted_password(password, salt, iterations)
    return ClientKeys(
        hmac256(salted, b"Client Key"), hmac256(salted, b"Server Key"), salt, iterations
    )


def make_secret(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramSecret:
    """A new secret for ``password`` (random salt), as ``CREATE ROLE … PASSWORD`` makes."""
    salt = os.urandom(SALT_LENGTH) if salt is None else salt
    keys = keys_from_password(password, salt, iterations)
    return ScramSecret(iterations, salt, sha256(keys.client_key), keys.server_key)


def new_nonce() -> str:
    return b64(os.urandom(NONCE_LENGTH))


def malformed(detail: str) -> AuthenticationError:
    return AuthenticationError("malformed SCRAM message", c.SQLSTATE_PROTOCOL_VIOLATION, detail)


def is_printable_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in nonce)


def split_attributes(message: str, what: str) -> list[tuple[str, str]]:
    """``a=1,b=2`` into pairs; each attribute a single letter followed by ``=``."""
    out = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise malformed(f"Malformed attribute in {what}.")
        out.append((part[0], part[2:]))
    return out


def auth_message(client_first_bare: str, server_first: str, client_final_bare: str) -> bytes:
    return f"{client_first_bare},{server_first},{client_final_bare}".encode()
