"""The board's session cookie and CSRF tokens, alone: what a cookie may hold, and what makes
it worthless (a change, another secret, time, a revoked key)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from app.access.keys import KeyBook, StoredKey, digest_of
from app.board.sessions import DEMO, Sessions
from app.config import Settings

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
ENV_KEY = "short"  # a weak key of API_KEYS: the cookie must not let it be guessed offline


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_keys": ENV_KEY,
        "board_secret": "a-board-secret",
        "demo": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def payload(cookie: str) -> dict[str, object]:
    body = cookie.split(".")[0]
    data: dict[str, object] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


def book(*stored: StoredKey) -> KeyBook:
    keys = KeyBook([SecretStr(ENV_KEY)], required=True)
    keys.replace(list(stored))
    return keys


def test_an_env_key_is_named_by_an_hmac_never_by_itself() -> None:
    sessions = Sessions(settings())
    keys = book()
    principal = keys.authenticate([ENV_KEY])
    assert principal is not None
    subject = sessions.subject_of(principal, ENV_KEY)
    cookie = sessions.encode(sessions.signed_in(subject, NOW))
    assert ENV_KEY not in json.dumps(payload(cookie))
    read = sessions.read(cookie, NOW)
    assert read is not None and read.subject == subject
    assert sessions.principal_of(subject, keys) == principal


def test_a_made_key_is_named_by_its_id_and_goes_with_its_revocation() -> None:
    stored = StoredKey("0123456789ab", "desk", "00" * 16, digest_of("00" * 16, "x"), ("c1",), None)
    sessions = Sessions(settings())
    keys = book(stored)
    principal = keys.holder_of("0123456789ab")
    assert principal is not None and principal.customers == frozenset({"c1"})
    subject = sessions.subject_of(principal, "the-key-itself")
    assert subject == "key:0123456789ab"
    keys.replace([])  # revoked: the next reload no longer finds it
    assert sessions.principal_of(subject, keys) is None


def test_a_changed_cookie_another_secret_or_an_old_one_is_worthless() -> None:
    sessions = Sessions(settings())
    cookie = sessions.encode(sessions.signed_in("env:abc", NOW))
    assert sessions.read(cookie[:-2] + "xx", NOW) is None
    assert Sessions(settings(board_secret="another")).read(cookie, NOW) is None
    hours = settings().board_session_hours
    assert sessions.read(cookie, NOW + timedelta(hours=hours, seconds=-1)) is not None
    assert sessions.read(cookie, NOW + timedelta(hours=hours)) is None
    assert sessions.read("", NOW) is None and sessions.read("garbage", NOW) is None


def test_a_csrf_token_belongs_to_one_session() -> None:
    sessions = Sessions(settings())
    one, two = sessions.signed_in("env:a", NOW), sessions.signed_in("env:a", NOW)
    assert sessions.csrf_ok(one, sessions.csrf_token(one))
    assert not sessions.csrf_ok(two, sessions.csrf_token(one))
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(None, "x")


def test_the_demo_session_is_the_demo_only_in_demo() -> None:
    keys = book()
    assert Sessions(settings(demo=True)).principal_of("demo", keys) is DEMO
    assert Sessions(settings()).principal_of("demo", keys) is None
    assert Sessions(settings()).principal_of("nonsense", keys) is None
