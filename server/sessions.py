"""Console sign-in: sessions, CSRF tokens and login throttling.

A session cookie holds a random secret (256 bits). The database row holds only HMAC-SHA256 of it
under the server's session key, a key the database does not hold: a row written straight into the
database signs nobody in (docs/security.md, T1/T2). A session ends at logout, after
`session_idle_minutes` unused, `session_max_hours` after sign-in, or when its user is disabled.

CSRF: every state-changing request made with the cookie carries `csrf_token` (form field) or an
`X-CSRF-Token` header equal to HMAC(session key, "csrf:" + session id): tied to the session, nothing
stored. Sign-in itself is protected the same way with a pre-session cookie. Requests with
`Authorization: Bearer` carry no cookie and need no CSRF token (a browser never adds that header).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.errors import GovernanceCheckFailed, Unauthenticated
from governance.records import ConsoleSession, User, utcnow
from governance.users import Identity

COOKIE = "atelier_session"
PRE_COOKIE = "atelier_login"  # before sign-in: binds the login form's CSRF token to this browser


def load_session_key(path: Path) -> bytes:
    """The session key (32 bytes, hex in a 0600 file), made on first start. Replacing it signs everyone out."""
    try:
        raw = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server process made it first
            return load_session_key(path)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
        return key
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise GovernanceCheckFailed(f"the session key {path} is not 32+ bytes of hex: delete it to make a new one")
    if path.stat().st_mode & 0o077:
        raise GovernanceCheckFailed(f"the session key {path} can be read by others: chmod 600 {path}")
    return key


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta


class Sessions:
    def __init__(self, key: bytes, policy: SessionPolicy):
        self._key = key
        self.policy = policy

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def note_key(self) -> bytes:
        """The key that signs the console's status notes (`pages.back`): derived from the session key, so
        every server process behind one data dir accepts the others' notes."""
        return hmac.new(self._key, b"atelier console notes", hashlib.sha256).digest()

    def start(self, session: Session, user_name: str) -> tuple[str, ConsoleSession]:
        """A new session for a user who just proved a password; returns (cookie value, row)."""
        user = session.scalar(select(User).where(User.name == user_name))
        assert user is not None
        secret = secrets.token_urlsafe(32)
        row = ConsoleSession(id="web-" + secrets.token_hex(16), user_id=user.id, secret_mac=self._mac(secret))
        session.add(row)
        session.flush()
        return secret, row

    def resume(self, session: Session, secret: str) -> tuple[Identity, ConsoleSession]:
        """The identity a session cookie proves (and the session seen now), or Unauthenticated."""
        if not secret or len(secret) > 100:
            raise Unauthenticated("not signed in")
        row = session.scalar(select(ConsoleSession).where(ConsoleSession.secret_mac == self._mac(secret)))
        if row is None or row.ended_at is not None:
            raise Unauthenticated("not signed in, or signed out")
        now = utcnow()
        if now - row.last_seen_at > self.policy.idle or now - row.created_at > self.policy.absolute:
            row.ended_at = now
            raise Unauthenticated("your session expired: sign in again")
        if not row.user.active:
            row.ended_at = now
            raise Unauthenticated(f"user {row.user.name} is disabled")
        if now - row.last_seen_at > timedelta(seconds=30):  # not a write per request
            row.last_seen_at = now
        identity = Identity(row.user.name, tuple(sorted(row.user.role_names)), row.id, "console", None)
        return identity, row

    def end(self, session: Session, secret: str) -> None:
        row = session.scalar(select(ConsoleSession).where(ConsoleSession.secret_mac == self._mac(secret)))
        if row is not None and row.ended_at is None:
            row.ended_at = utcnow()

    def csrf_token(self, session_id: str) -> str:
        return self._mac("csrf:" + session_id)

    def csrf_ok(self, session_id: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_token(session_id), given or "")


class LoginThrottle:
    """At most `limit` failed sign-ins per user name, and 4 x `limit` per client address (an office
    behind one NAT address is many people), in `window` seconds, in this server process (several
    processes: each counts its own; put a limit in the proxy as well). Keys: "user:NAME", "addr:IP"."""

    def __init__(self, limit: int, window: float = 900.0):
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def reserve(self, *keys: str) -> int:
        """0 when a sign-in may be tried now, and then the attempt is counted as a failure at once, under
        the lock (a burst of simultaneous guesses cannot all pass the check before any is counted); else
        how many seconds until one may. A sign-in that succeeds then calls `succeeded` (the user's count)
        and `refund` (the address's)."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= (self.limit * 4 if key.startswith("addr:") else self.limit):
                    waits.append(int(self.window - (now - q[0])) + 1)
            if waits:
                return max(waits)
            for key in keys:
                self._failures[key].append(now)
            if len(self._failures) > 100_000:  # a flood of names: forget the idle ones
                for k in [k for k, q in self._failures.items() if not q]:
                    del self._failures[k]
            return 0

    def refund(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                q = self._failures.get(key)
                if q:
                    q.pop()

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
