"""The `api_keys` table: API keys made with `jobs-gateway keys create`.

A row holds a key's id, name, scope, rate and a salted digest, never the key itself
(`app.access.keys` makes keys and checks them against these rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.tables import ApiKey
from app.store.writer import Writer


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A live key as the database holds it (no key, only its digest)."""

    key_id: str
    name: str
    salt: str
    digest: str
    customers: tuple[str, ...] | None
    rate_per_minute: int | None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as `keys list` shows it: never the key."""

    name: str
    customers: tuple[str, ...] | None
    rate_per_minute: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def add(writer: Writer, key: StoredKey, *, now: datetime) -> bool:
    """Store a new key; False when a live key already has its name."""
    try:
        async with writer.transaction() as session:
            taken = await session.scalar(
                select(ApiKey.id).where(ApiKey.name == key.name, ApiKey.revoked_at.is_(None))
            )
            if taken is not None:
                return False
            session.add(
                ApiKey(
                    name=key.name,
                    key_id=key.key_id,
                    salt=key.salt,
                    digest=key.digest,
                    customers=list(key.customers) if key.customers is not None else None,
                    rate_per_minute=key.rate_per_minute,
                    created_at=now,
                )
            )
    except IntegrityError:  # another `keys create` of the same name won the race
        return False
    return True


async def revoke(writer: Writer, name: str, *, now: datetime) -> bool:
    """Revoke the live key named `name`; False when there is none."""
    async with writer.transaction() as session:
        result = await session.execute(
            update(ApiKey)
            .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return bool(getattr(result, "rowcount", 0))


async def list_keys(session: AsyncSession, *, revoked: bool = False) -> list[KeyInfo]:
    query = select(ApiKey).order_by(ApiKey.name, ApiKey.id)
    if not revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    rows = (await session.scalars(query)).all()
    return [
        KeyInfo(
            name=r.name,
            customers=tuple(r.customers) if r.customers is not None else None,
            rate_per_minute=r.rate_per_minute,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
        )
        for r in rows
    ]


def _stored(row: ApiKey) -> StoredKey:
    return StoredKey(
        key_id=row.key_id,
        name=row.name,
        salt=row.salt,
        digest=row.digest,
        customers=tuple(row.customers) if row.customers is not None else None,
        rate_per_minute=row.rate_per_minute,
    )


async def live_keys(session: AsyncSession) -> list[StoredKey]:
    rows = (await session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))).all()
    return [_stored(r) for r in rows]


async def stored_key(session: AsyncSession, key_id: str) -> StoredKey | None:
    """The live key with this key id, if there is one."""
    row = await session.scalar(
        select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
    )
    return None if row is None else _stored(row)


async def record_use(writer: Writer, used: dict[str, datetime]) -> None:
    """Write when keys were last used (never moving a time backwards)."""
    async with writer.transaction() as session:
        for key_id, at in used.items():
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.key_id == key_id,
                    (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < at),
                )
                .values(last_used_at=at)
            )
