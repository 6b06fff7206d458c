"""Web sessions: what a browser login leaves on the proxy.

    browser --cookie (opaque, 32 random bytes)--> proxy: WebSessions[sha256(cookie)]
                                                   ├─ key pair (never leaves the proxy)
                                                   ├─ SSH + TLS certificates, short-lived,
                                                   │  renewed from auth while in use
                                                   └─ CSRF token for its forms

The store keeps only a hash of the cookie, so a dump of the proxy's memory (or a log
line) does not hand out live sessions. Sessions end on logout, after IDLE_TIMEOUT without
a request or a keystroke in one of their terminals, when their certificates can no
longer be renewed, and at once when a lock matches their user (`end_locked`, called by
the proxy's watch of locks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from certgate.api.bundle import CertBundle
from certgate.api.identity import Identity
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import new_key

FORWARDED_CERT = "Certgate-Forwarded-Cert"
FORWARDED_ADDR = "Certgate-Client-Addr"
# A session unused this long ends; the browser then shows the login page again.
IDLE_TIMEOUT = 30 * 60.0
# Certificates a web session asks for: short, so a session the proxy forgets (a crash)
# leaves nothing usable behind for long; renewed when less than RENEW_MARGIN is left.
CERT_TTL = "30m"
RENEW_MARGIN = timedelta(minutes=10)
# One user may hold this many browser sessions; the oldest ends beyond it.
MAX_PER_USER = 20

Ender = Callable[["WebSession", str], None]


@dataclass
class WebSession:
    id: str  # sha256 of the cookie, hex: also the handle terminals and logs use
    csrf: str
    key_pem: str
    bundle: CertBundle
    client_addr: str
    last_used: float = field(default_factory=time.monotonic)
    ended: str = ""  # why it ended, once it has
    # Called with the reason when the session ends (open terminals close with it).
    on_end: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def identity(self) -> Identity:
        return self.bundle.identity

    @property
    def user(self) -> str:
        return self.bundle.identity.username

    def forwarded_headers(self) -> dict[str, str]:
        """Headers that make an auth call on this user's behalf (proxy/web.py forward)."""
        der = x509.load_pem_x509_certificate(self.bundle.tls_cert.encode()).public_bytes(
            Encoding.DER
        )
        return {
            FORWARDED_CERT: base64.b64encode(der).decode(),
            FORWARDED_ADDR: self.client_addr,
        }

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())


def session_id(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class WebSessions:
    def __init__(
        self,
        auth: AsyncAuthClient,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = auth
        self._sessions: dict[str, WebSession] = {}
        self.idle_timeout = idle_timeout
        self._clock = clock

    async def log_in(
        self, user: str, password: str, otp: str, client_addr: str
    ) -> tuple[str, WebSession]:
        """Password + code checked by auth exactly as for `cgsh login` (lockout, audit);
        returns the cookie value (given to the browser, never stored) and the session."""
        key_pem, public_key = new_key()
        answer = await self._auth.call(
            "POST",
            "/v1/login",
            json={
                "user": user,
                "password": password,
                "otp": otp,
                "public_key": public_key,
                "ttl": CERT_TTL,
            },
            headers={FORWARDED_ADDR: client_addr},
        )
        # Idle sessions end when next looked up; those never looked up again go here,
        # so the store holds no more than the sessions in use (no timer needed).
        self.sweep()
        cookie = secrets.token_urlsafe(32)
        session = WebSession(
            id=session_id(cookie),
            csrf=secrets.token_urlsafe(32),
            key_pem=key_pem,
            bundle=CertBundle.from_dict(answer),
            client_addr=client_addr,
            last_used=self._clock(),
        )
        self._sessions[session.id] = session
        mine = sorted(
            (s for s in self._sessions.values() if s.user == user), key=lambda s: s.last_used
        )
        for old in mine[:-MAX_PER_USER]:
            self.end(old, "logged out: too many browser sessions")
        return cookie, session

    def find(self, cookie: str) -> WebSession | None:
        """The live session behind a cookie, touched; None if it ended or idled out."""
        if not cookie or len(cookie) > 128:
            return None
        session = self._sessions.get(session_id(cookie))
        if session is None:
            return None
        now = self._clock()
        if now - session.last_used > self.idle_timeout:
            self.end(session, "your web session ended after being idle")
            return None
        session.last_used = now
        return session

    def touch(self, session: WebSession) -> None:
        """The session is in use without a page request: typing in its web terminal."""
        session.last_used = self._clock()

    async def fresh(self, session: WebSession) -> WebSession:
        """Renew the certificates when they are close to expiry (the session is in use)."""
        if session.identity.expires - datetime.now(UTC) > RENEW_MARGIN:
            return session
        _, public_key = _public_of(session.key_pem)
        answer = await self._auth.call(
            "POST",
            "/v1/certs/renew",
            json={"public_key": public_key, "ttl": CERT_TTL},
            headers=session.forwarded_headers(),
        )
        session.bundle = CertBundle.from_dict(answer)
        return session

    def end(self, session: WebSession, reason: str) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        session.ended = reason
        for callback in list(session.on_end):
            callback(reason)

    def end_where(self, predicate: Callable[[WebSession], str | None]) -> int:
        """End every session for which `predicate` gives a reason; how many ended."""
        ended = 0
        for session in list(self._sessions.values()):
            reason = predicate(session)
            if reason:
                self.end(session, reason)
                ended += 1
        return ended

    def sweep(self) -> int:
        """End idle sessions (a timer calls this; `find` also checks on each request)."""
        now = self._clock()
        return self.end_where(
            lambda s: (
                "your web session ended after being idle"
                if now - s.last_used > self.idle_timeout
                else None
            )
        )

    def __len__(self) -> int:
        return len(self._sessions)


def _public_of(key_pem: str) -> tuple[str, str]:
    key = load_pem_private_key(key_pem.encode(), password=None)
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return key_pem, public
