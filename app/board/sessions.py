"""Sign-in for people: the board's session cookie, its CSRF tokens, and who a session is.

The cookie (`jgw_board`) is signed with `BOARD_SECRET` (itsdangerous) and holds:
- `s`, the subject: never the key. A key made with `keys create` is named by its key id
  (`key:<id>`); a key of `API_KEYS` by an HMAC of it under the board's secret
  (`env:<hex>`), so the cookie tells nothing of the key even when the key is short;
  `demo` is the signed-in-at-once session of DEMO. No subject: not signed in yet.
- `n`, a random nonce, new at every sign-in: the CSRF token of the session's forms is an
  HMAC of it, so a token is good for one session only.
- `e`, when the sign-in ends (`BOARD_SESSION_HOURS`), checked against the app's clock.

A subject is turned back into a principal on every request from the keys in memory
(`KeyBook`), which are read again every 2 s: a revoked key ends its sessions within seconds,
and its scope is the one the key has now.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer

from app.access.keys import ANYONE, KeyBook, Principal
from app.config import Settings

COOKIE = "jgw_board"
CSRF_FIELD = "csrf"
DEMO_SUBJECT = "demo"

DEMO = Principal(name="DEMO", identity="demo")
"""Who the board's DEMO session is: every customer, as the demo's own key."""


@dataclass(frozen=True, slots=True)
class Session:
    """What a board cookie says, once its signature and its time were checked."""

    subject: str | None  # None: not signed in (the cookie carries only a nonce for forms)
    nonce: str
    expires: float | None  # epoch seconds; None with no subject


class Sessions:
    """Issues and reads the board's cookies for one app."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.board_secret.get_secret_value() if settings.board_secret else None
        # Without BOARD_SECRET, a secret of this process: sign-ins end with a restart.
        self._secret = (secret or secrets.token_urlsafe(32)).encode()
        self._serializer = URLSafeSerializer(self._secret, salt="jobs-gateway.board.session")
        self._seconds = settings.board_session_hours * 3600
        self._demo = settings.demo
        # API_KEYS by their fingerprint, to find a signed-in env key again without the key
        # being in the cookie.
        self._env = {
            self._fingerprint(k.get_secret_value()): k.get_secret_value() for k in settings.api_keys
        }

    @property
    def seconds(self) -> int:
        return int(self._seconds)

    def _fingerprint(self, key: str) -> str:
        mac = hmac.new(self._secret, b"env-key:" + key.encode("utf-8", "surrogatepass"), "sha256")
        return mac.hexdigest()[:32]

    def read(self, cookie: str | None, now: datetime) -> Session | None:
        """The session a cookie holds; None when it is missing, forged or over."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        subject, expires = data.get("s"), data.get("e")
        if subject is None:
            return Session(None, data["n"], None)
        if not isinstance(subject, str) or not isinstance(expires, int | float):
            return None
        if expires <= now.timestamp():
            return None
        return Session(subject, data["n"], float(expires))

    def anonymous(self) -> Session:
        """A cookie for someone not signed in: only a nonce, so the sign-in form has a token."""
        return Session(None, secrets.token_urlsafe(16), None)

    def signed_in(self, subject: str, now: datetime) -> Session:
        """A new session (a new nonce: tokens of the form before do not carry over)."""
        return Session(subject, secrets.token_urlsafe(16), now.timestamp() + self._seconds)

    def encode(self, session: Session) -> str:
        data: dict[str, object] = {"n": session.nonce}
        if session.subject is not None:
            data |= {"s": session.subject, "e": int(session.expires or 0)}
        return self._serializer.dumps(data)

    def csrf_token(self, session: Session) -> str:
        mac = hmac.new(self._secret, b"csrf:" + session.nonce.encode(), hashlib.sha256)
        return mac.hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)

    def subject_of(self, principal: Principal, key: str) -> str:
        """What a session names a principal by (the key it signed in with: never kept)."""
        if principal.key_id is not None:
            return f"key:{principal.key_id}"
        if principal is ANYONE:
            return DEMO_SUBJECT
        return f"env:{self._fingerprint(key)}"

    def principal_of(self, subject: str, keys: KeyBook) -> Principal | None:
        """Who a session is now; None once its key is revoked or gone from API_KEYS."""
        if not keys.required:
            return ANYONE  # no key needed at all (DEMO without keys, AUTH_DISABLED)
        kind, _, rest = subject.partition(":")
        if subject == DEMO_SUBJECT:
            return DEMO if self._demo else None
        if kind == "key":
            return keys.holder_of(rest)
        if kind == "env":
            key = self._env.get(rest)
            return keys.authenticate([key]) if key is not None else None
        return None

    @property
    def opens_signed_in(self) -> bool:
        """DEMO: the board opens signed in, so `make demo` shows it at once."""
        return self._demo
