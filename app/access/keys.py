"""API keys: who is asking, which customers they may see, and how fast they may ask.

Two kinds of key are accepted, as `Authorization: Bearer <key>` or `X-API-Key: <key>`:
- `API_KEYS`, from the environment: full access, for a first setup;
- keys made with `jobs-gateway keys create NAME [--customers ID,ID] [--rate-per-minute N]`,
  kept in the `api_keys` table. Such a key reads `jgw_<key id>_<secret>`: the key id finds its
  row, and the row holds only a SHA-256 of the whole key with a random salt of its own. The
  keys are random and long (256 bits of secret), so a fast hash is enough: nothing can be
  guessed from the digest that an attacker could not guess faster by trying keys.

`KeyBook` answers "which key is this?" from memory on every request: the live keys are read
from the database every `RELOAD_SECONDS` (so `keys revoke NAME` takes effect in a running
server within seconds, on every replica), a key once verified is remembered until the next
reload that changes the keys, and the times keys were last used are written back in batches.

A key made since the last reload works at once: a created key (`jgw_<key id>_...`) whose id
the book does not know is looked up in the database by its id (`KeyBook.look_up`), so the
curl line pasted right after `keys create` is answered. Made-up keys must not turn into a
flood of queries, so a look-up is guarded three ways: requests for one key id share one
query (single flight); a key id found missing, or revoked, is not asked again for
`MISS_SECONDS`; and a process makes at most `LOOKUPS_PER_SECOND` look-ups a second (bursts
of `LOOKUP_BURST`), past which an unknown key is refused as any wrong key is, until the next
reload knows it. A key id the book knows is never looked up: a wrong secret for it is refused
from memory.

A look-up and a reload may race. Every read of the keys takes a ticket when it begins, and
the newest read wins: a key a look-up found live stays through a reload that began before
the look-up (that reload's read may predate the key), and is not added once a reload that
began after the look-up has been applied (it may have seen the key revoked). So a revoked
key goes with the first reload that begins after the revocation, as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store import keys as stored_keys
from app.store.keys import KeyInfo, StoredKey
from app.store.writer import Writer

log = logging.getLogger(__name__)

PREFIX = "jgw_"
KEY_ID_HEX = 12  # 48 bits: finds the row; not a secret
SECRET_BYTES = 32
RELOAD_SECONDS = 2.0
"""How often a running server reads the live keys: the longest a revoked key still works."""
USED_FLUSH_SECONDS = 30.0
"""How often the last-used times of keys are written (`keys list` shows them)."""
MAX_REMEMBERED = 10_000
NAME_MAX = 100
LOOKUPS_PER_SECOND = 5.0
"""Look-ups of unknown key ids a process makes a second, at most: made-up keys cost little."""
LOOKUP_BURST = 10
"""Look-ups a process may make at once before `LOOKUPS_PER_SECOND` holds them back."""
MISS_SECONDS = 30.0
"""How long a key id found missing or revoked is not looked up again."""
MAX_MISSES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a key of `API_KEYS`, a created key, or anyone (no key needed)."""

    name: str
    identity: str  # what the rate limit counts under
    customers: frozenset[str] | None = None  # None: every customer
    rate_per_minute: int | None = None  # None: RATE_LIMIT_PER_MINUTE
    key_id: str | None = None  # a created key's id, to record its use


ANYONE = Principal(name="anyone", identity="anyone")
"""The principal of every request when no key is needed (DEMO without keys, AUTH_DISABLED)."""


class KeyRefused(Exception):
    """A key that cannot be made or revoked; the message says why, in one line."""


def digest_of(salt: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of something shaped like a created key, else None."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_HEX or not secret:
        return None
    return key_id


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise KeyRefused(f"a key's name is 1 to {NAME_MAX} printable characters")
    return name


def taken_message(name: str) -> str:
    return f"a live key is named {name!r} already: revoke it or pick another name"


# -- the table (its SQL is app.store.keys) ------------------------------------------------


async def create_key(
    writer: Writer,
    name: str,
    *,
    customers: Sequence[str] | None,
    rate_per_minute: int | None,
    now: datetime,
) -> str:
    """Store a new key under `name` and return it: the only time it exists in the clear."""
    name = check_name(name)
    if rate_per_minute is not None and rate_per_minute < 0:
        raise KeyRefused("--rate-per-minute is 0 (no limit) or more")
    scope = sorted({c.strip() for c in customers if c.strip()}) if customers is not None else None
    if scope is not None and not scope:
        raise KeyRefused("--customers lists no customer id")
    key_id, key = new_key()
    salt = secrets.token_hex(16)
    added = await stored_keys.add(
        writer,
        stored_keys.StoredKey(
            key_id=key_id,
            name=name,
            salt=salt,
            digest=digest_of(salt, key),
            customers=tuple(scope) if scope is not None else None,
            rate_per_minute=rate_per_minute,
        ),
        now=now,
    )
    if not added:
        raise KeyRefused(taken_message(name))
    return key


# -- the book of keys, in memory ---------------------------------------------------------


def _principal_of(stored: StoredKey) -> Principal:
    return Principal(
        name=stored.name,
        identity=f"key:{stored.key_id}",
        customers=frozenset(stored.customers) if stored.customers is not None else None,
        rate_per_minute=stored.rate_per_minute,
        key_id=stored.key_id,
    )


class KeyBook:
    """Every key a running server accepts, and the principal each one stands for."""

    def __init__(
        self,
        api_keys: Iterable[SecretStr],
        *,
        required: bool,
        disabled: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = [
            (k.get_secret_value().encode("utf-8", "surrogatepass"), f"env:{i}")
            for i, k in enumerate(api_keys, 1)
        ]
        # `required` says API_KEYS or the deployment demands a key; a created key makes one
        # needed too (unless AUTH_DISABLED is set on purpose).
        self._required = required
        self._disabled = disabled
        self._stored: dict[str, StoredKey] = {}
        self._accepted: dict[str, Principal] = {}
        self._used: dict[str, float] = {}
        # Look-ups of key ids not known yet (see the module docstring).
        self._monotonic = monotonic
        self._tickets = 0  # reads of the keys begun so far: reloads and look-ups
        self._applied = 0  # the ticket of the newest reload applied
        self._found: dict[str, int] = {}  # key id -> ticket of the look-up that found it
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._misses: dict[str, float] = {}  # key id -> not looked up again before then
        self._budget = float(LOOKUP_BURST)
        self._budget_at = monotonic()

    @property
    def required(self) -> bool:
        return self._required or (bool(self._stored) and not self._disabled)

    @property
    def live(self) -> int:
        return len(self._stored)

    def replace(self, stored: Sequence[StoredKey], *, ticket: int | None = None) -> None:
        """The live keys are now `stored`, as read by the read with `ticket` (None: read
        just now): a key revoked since is forgotten at once. A key a later look-up found
        stays: that read is newer than this one."""
        if ticket is None:
            ticket = self._ticket()
        keys = {s.key_id: s for s in stored}
        self._found = {k: t for k, t in self._found.items() if t > ticket}
        for key_id in self._found:
            if key_id not in keys and key_id in self._stored:
                keys[key_id] = self._stored[key_id]
        self._applied = max(self._applied, ticket)
        if keys != self._stored:
            self._stored = keys
            self._accepted = {}

    def _ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def authenticate(self, offered: Sequence[str]) -> Principal | None:
        """The principal of the first offered key that is valid; None when none is (and a
        key is required). Cheap enough for every request: a key verified once is looked up
        in a dict until the keys change."""
        if not self.required:
            return ANYONE
        for key in offered:
            principal = self._accepted.get(key)
            if principal is None:
                principal = self._verify(key)
                if principal is None:
                    continue
                if len(self._accepted) >= MAX_REMEMBERED:
                    self._accepted.clear()
                self._accepted[key] = principal
            if principal.key_id is not None:
                self._used[principal.key_id] = time.time()
            return principal
        return None

    def _verify(self, key: str) -> Principal | None:
        given = key.encode("utf-8", "surrogatepass")
        # Compare with every key of API_KEYS, always: timing tells nothing of which matched.
        matched: str | None = None
        for value, identity in self._env:
            if hmac.compare_digest(given, value):
                matched = identity
        if matched is not None:
            return Principal(name="API_KEYS", identity=matched)
        key_id = key_id_of(key)
        stored = self._stored.get(key_id) if key_id else None
        if stored is None or not hmac.compare_digest(digest_of(stored.salt, key), stored.digest):
            return None
        return _principal_of(stored)

    def holder_of(self, key_id: str) -> Principal | None:
        """The principal of the live created key with this id, without the key: for a
        sign-in that was checked against the key once (the board's sessions), and ends
        with the first reload that no longer finds the key."""
        stored = self._stored.get(key_id)
        return None if stored is None else _principal_of(stored)

    async def look_up(
        self, offered: Sequence[str], sessions: async_sessionmaker[AsyncSession]
    ) -> Principal | None:
        """`authenticate`, for created keys this process does not know yet: each is looked
        up in the database by its key id, within the guards of the module docstring. None
        when no offered key is valid (a made-up key stays refused)."""
        if not self.required:
            return ANYONE
        for key in offered:
            key_id = key_id_of(key)
            if key_id is None or key_id in self._stored:
                continue  # not a created key, or one `authenticate` judged already
            await self._find(key_id, sessions)
            if key_id in self._stored:
                principal = self.authenticate([key])
                if principal is not None:
                    return principal
        return None

    async def _find(self, key_id: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Read the key id's row into the book, if it is live; one read for many asking."""
        pending = self._pending.get(key_id)
        if pending is None:
            if self._missed(key_id) or not self._spend():
                return
            pending = asyncio.ensure_future(self._fetch(key_id, sessions))
            self._pending[key_id] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key_id, None))
        # Shielded: a request that goes away does not cancel the read the others wait on.
        await asyncio.shield(pending)

    async def _fetch(self, key_id: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        ticket = self._ticket()
        try:
            async with sessions() as session:
                stored = await stored_keys.stored_key(session, key_id)
        except Exception as exc:  # the database may be away: refused now, asked next time
            log.warning("could not look up an API key: %s", type(exc).__name__)
            return
        if stored is None:
            self._miss(key_id)
        elif self._applied < ticket:  # no reload newer than this read has spoken since
            self._stored[key_id] = stored
            self._found[key_id] = ticket

    def _missed(self, key_id: str) -> bool:
        until = self._misses.get(key_id)
        if until is None:
            return False
        if until > self._monotonic():
            return True
        del self._misses[key_id]
        return False

    def _miss(self, key_id: str) -> None:
        now = self._monotonic()
        if len(self._misses) >= MAX_MISSES:
            self._misses = {k: t for k, t in self._misses.items() if t > now}
            if len(self._misses) >= MAX_MISSES:
                self._misses.clear()
        self._misses[key_id] = now + MISS_SECONDS

    def _spend(self) -> bool:
        """Take one look-up from the budget (a token bucket); False when there is none."""
        now = self._monotonic()
        elapsed = max(0.0, now - self._budget_at)
        self._budget = min(float(LOOKUP_BURST), self._budget + elapsed * LOOKUPS_PER_SECOND)
        self._budget_at = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    def take_used(self) -> dict[str, float]:
        used, self._used = self._used, {}
        return used

    async def reload(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        ticket = self._ticket()
        async with sessions() as session:
            stored = await stored_keys.live_keys(session)
        self.replace(stored, ticket=ticket)

    async def run(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        *,
        reload_seconds: float = RELOAD_SECONDS,
        flush_seconds: float = USED_FLUSH_SECONDS,
    ) -> None:
        """Keep the book current (a background task): read the live keys every
        `reload_seconds`, write the last-used times every `flush_seconds`."""
        last_flush = time.monotonic()
        while True:
            await asyncio.sleep(reload_seconds)
            try:
                await self.reload(sessions)
                if time.monotonic() - last_flush >= flush_seconds:
                    last_flush = time.monotonic()
                    await self.flush_used(writer)
            except (SQLAlchemyError, OSError) as exc:
                # The keys known stay in force; the next round tries again.
                log.warning("could not read the API keys: %s", type(exc).__name__)

    async def flush_used(self, writer: Writer) -> None:
        used = self.take_used()
        if not used:
            return
        at = {key_id: datetime.fromtimestamp(t, UTC) for key_id, t in used.items()}
        try:
            await stored_keys.record_use(writer, at)
        except BaseException:
            for key_id, t in used.items():  # keep them for the next round
                self._used.setdefault(key_id, t)
            raise


def scope_text(customers: Sequence[str] | None) -> str:
    return "every customer" if customers is None else ", ".join(customers)


def describe(info: KeyInfo) -> dict[str, Any]:
    """A key as `keys list --json` prints it."""
    return {
        "name": info.name,
        "customers": list(info.customers) if info.customers is not None else None,
        "rate_per_minute": info.rate_per_minute,
        "created_at": info.created_at.isoformat(),
        "last_used_at": info.last_used_at.isoformat() if info.last_used_at else None,
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
    }
