"""Ids typed by hand: a full UUID, or the unique start of one (the 8 characters tables print).

A prefix is looked up as a range on the UUID column (``low <= id <= high``), which is
the primary key's index on PostgreSQL (native ``uuid``) and on SQLite (``CHAR(32)`` of
lower-case hex, whose text order is the UUID order) alike; ``CAST(id AS TEXT) LIKE``
would read every row.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

MIN_PREFIX = 4  # hex digits; fewer would match too much to be a useful id
_HEX = frozenset("0123456789abcdef")


def parse_id(value: object, error: type[Exception], what: str) -> uuid.UUID | str:
    """A full UUID, or the lower-case hex digits of a prefix (dashes dropped).

    ``error`` (a not-found error) names the problem when ``value`` is neither.
    """
    if isinstance(value, uuid.UUID):
        return value
    text = str(value).strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    digits = text.replace("-", "").lower()
    if not digits or not set(digits) <= _HEX or len(digits) >= 32:
        raise error(f"no {what} {value!r}: not an id (a UUID or its first {MIN_PREFIX}+ digits)")
    if len(digits) < MIN_PREFIX:
        raise error(f"no {what} {value!r}: give at least {MIN_PREFIX} hex digits of the id")
    return digits


def prefix_bounds(digits: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The smallest and largest UUID that start with these hex digits."""
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def resolve_id(
    session: Session | Connection, column: Any, value: object, error: type[Exception], what: str
) -> uuid.UUID:
    """The one id in ``column`` that ``value`` is or starts; ``error`` when none or several."""
    parsed = parse_id(value, error, what)
    if isinstance(parsed, uuid.UUID):
        return parsed
    low, high = prefix_bounds(parsed)
    within = (column >= low, column <= high)
    found = list(session.scalars(select(column).where(*within).order_by(column).limit(2)))
    if not found:
        raise error(f"no {what} starting with {value!r}")
    if len(found) == 1:
        return uuid.UUID(str(found[0]))
    count = session.scalar(select(func.count()).select_from(column.table).where(*within))
    raise error(
        f"ambiguous id {value!r}: {count} {what}s start with it "
        f"({', '.join(str(f) for f in found)}{', ...' if (count or 0) > 2 else ''}); "
        "give more of it"
    )
