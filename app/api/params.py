"""Reading query parameters that FastAPI alone cannot check: enum names and opaque cursors
(times: `app.api.times`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path, Query

from app.api.errors import InvalidParameter
from app.catalog import Catalog


def shorten(value: str, limit: int = 80) -> str:
    """A value quoted back in an error, cut short: an error need not echo 20 KB of input."""
    return value if len(value) <= limit else value[:limit] + "..."


def split_values(values: Sequence[str] | None) -> list[str]:
    """`?a=x&a=y,z` -> [x, y, z]: each filter is repeatable or comma-separated."""
    out: list[str] = []
    for raw in values or ():
        out.extend(part.strip() for part in raw.split(",") if part.strip())
    return list(dict.fromkeys(out))


def refuse_empty(param: str, values: Sequence[str] | None, allowed: Sequence[str]) -> None:
    """422 for an empty value of a filter of names (`?status=`, `?status=failed,`), rather
    than reading it as no filter: a client whose variable came out empty would otherwise get
    everything."""
    if any(not part.strip() for raw in values or () for part in raw.split(",")):
        raise InvalidParameter(
            f"{param}: an empty value; name one or more of: {', '.join(allowed)}, "
            "or leave the parameter out"
        )


def choice_filter(
    param: str, values: Sequence[str] | None, allowed: Sequence[str]
) -> list[str] | None:
    """Values of a small fixed set (event types, severities); 422 listing the allowed ones."""
    refuse_empty(param, values, allowed)
    names = split_values(values)
    for name in names:
        if name not in allowed:
            raise InvalidParameter(
                f"{param}: unknown value {shorten(name)!r}; allowed: {', '.join(allowed)}"
            )
    return names or None


def enum_filter(param: str, values: Sequence[str] | None, catalog: Catalog) -> list[str] | None:
    """Names of `catalog` (aliases and `unknown` included); 422 listing the allowed names."""
    refuse_empty(param, values, catalog.names())
    names = [v.lower() for v in split_values(values)]
    if not names:
        return None
    for name in names:
        if not catalog.is_name(name):
            raise InvalidParameter(
                f"{param}: unknown value {shorten(name)!r}; allowed: {', '.join(catalog.names())}"
            )
    return names


def fingerprint(**query: Any) -> str:
    """A short hash of what a cursor was issued for, so it is not reused with other filters."""
    blob = json.dumps(query, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode_cursor(position: Sequence[Any], fp: str) -> str:
    blob = json.dumps({"k": list(position), "f": fp}, separators=(",", ":"))
    return base64.urlsafe_b64encode(blob.encode()).decode().rstrip("=")


def decode_cursor(token: str, fp: str, *, size: int = 3) -> list[Any]:
    """The keyset position in a cursor this API issued for the same query; 422 otherwise."""
    bad = InvalidParameter(
        "cursor: not a cursor this endpoint issued; pass next_cursor from the previous page "
        "unchanged, or leave cursor out to start from the first page"
    )
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise bad from None
    if not isinstance(data, dict) or not isinstance(data.get("k"), list):
        raise bad
    position: list[Any] = data["k"]
    if len(position) != size or not all(
        (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**31)
        or (isinstance(v, str) and "\x00" not in v and len(v) <= 400)
        for v in position
    ):
        raise bad
    if data.get("f") != fp:
        raise InvalidParameter(
            "cursor: it was issued for other filters or another sort; repeat the query that "
            "returned it, or leave cursor out to start again"
        )
    return position


MAX_ID = 2**63 - 1
"""The largest id (of an event, a delivery) a parameter may name: a signed 64-bit integer."""


def id_cursor(value: str | None) -> int | None:
    """An id-based cursor (`next_cursor` of /alerts, /webhooks/deliveries); 422 otherwise."""
    if value is None:
        return None
    if not value.isdecimal() or int(value) > MAX_ID:
        raise InvalidParameter("cursor: not a cursor this endpoint issued")
    return int(value)


RowId = Annotated[int, Path(ge=1, le=MAX_ID, examples=[1])]
"""A row's id in a path (a delivery, a maintenance window)."""
CustomerIds = Annotated[
    list[str] | None, Query(description="Repeatable or comma-separated customer ids.")
]
"""The `customer_id` filter every listing takes (`split_values` splits it)."""
IdCursor = Annotated[
    str | None, Query(max_length=40, description="next_cursor of the previous page.")
]
"""The cursor of listings paged by row id (`id_cursor` reads it)."""
