"""Console logins: who is looking, by signed cookie, and a CSRF token for every form.

A person logs in with their personal token (the approvers file) — or, where the admin API is
token-protected, with the admin token as a read-only ``admin`` viewer. On an unauthenticated
loopback listener with no approvers file (a laptop demo) the console is open to a read-only
``local`` viewer, as the admin API is; a non-loopback listener always has a token (the admin
API refuses to start otherwise).

The cookie holds only the person's name, an expiry and a random nonce, signed with HMAC-SHA256
under a per-process secret: a restart logs everyone out. Each request looks the name up again,
so removing someone from the approvers file ends their access. The CSRF token is an HMAC of the
nonce; forms carry it and every POST must return it (and, when the browser sends ``Origin``,
come from the console's own origin).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from proxy.approvals.model import Approver
from proxy.approvals.people import People

COOKIE = "pgwarden_console"
LOGIN_COOKIE = "pgwarden_login"
LIFETIME = 12 * 3600.0
ADMIN = Approver("admin", frozenset(), "viewer")
LOCAL = Approver("local", frozenset(), "viewer")


@dataclass(frozen=True, slots=True)
class Login:
    person: Approver
    nonce: str
    expires: float
    via: str  # "token", "admin-token", "open"


class Signer:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def sign(self, name: str, via: str, now: float) -> str:
        payload = orjson.dumps(
            {"n": name, "v": via, "e": now + LIFETIME, "x": secrets.token_hex(16)}
        )
        return base64.urlsafe_b64encode(payload).decode() + "." + self._mac(payload)

    def read(self, cookie: str | None, now: float) -> tuple[str, str, str, float] | None:
        """(name, via, nonce, expires) of a valid unexpired cookie, else None."""
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(body.encode())
        except ValueError:
            return None
        if not hmac.compare_digest(self._mac(payload), mac):
            return None
        try:
            data = orjson.loads(payload)
            name, via, nonce, expires = str(data["n"]), str(data["v"]), str(data["x"]), data["e"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(expires, int | float) or expires < now:
            return None
        return name, via, nonce, float(expires)

    def csrf(self, nonce: str) -> str:
        return self._mac(b"csrf:" + nonce.encode())

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form value) of a pre-login double-submit pair."""
        nonce = secrets.token_hex(16)
        return nonce, self._mac(b"login:" + nonce.encode())

    def login_ok(self, cookie: str | None, form_value: str) -> bool:
        if not cookie:
            return False
        return hmac.compare_digest(self._mac(b"login:" + cookie.encode()), form_value)


class Gatekeeper:
    """Turns tokens into logins and cookies back into people."""

    def __init__(self, people: People, admin_token: str | None, signer: Signer) -> None:
        self.people = people
        self.admin_token = admin_token
        self.signer = signer

    @property
    def open(self) -> bool:
        """No way to authenticate anyone: a loopback-only, read-only console."""
        return not self.people and self.admin_token is None

    def check_token(self, token: str) -> tuple[Approver, str] | None:
        person = self.people.by_token(token)
        if person is not None:
            return person, "token"
        if self.admin_token is not None and hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
        ):
            return ADMIN, "admin-token"
        return None

    def login(self, cookie: str | None, now: float | None = None) -> Login | None:
        now = time.time() if now is None else now
        read = self.signer.read(cookie, now)
        if read is None:
            if self.open:
                return Login(LOCAL, "open", now + LIFETIME, "open")
            return None
        name, via, nonce, expires = read
        if via == "admin-token" and self.admin_token is not None:
            return Login(ADMIN, nonce, expires, via)
        if via == "open" and self.open:
            return Login(LOCAL, nonce, expires, via)
        person = self.people.by_name(name)
        if person is None or via not in ("token", "password"):
            return None
        return Login(person, nonce, expires, via)
