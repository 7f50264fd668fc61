"""Declarative base, naming convention, shared column types and mixins.

Every constraint and index gets a predictable name from ``NAMING_CONVENTION``
(``pk_ai_requests``, ``fk_ai_attempts_request_id_ai_requests``,
``uq_ai_requests_idempotency_key``, ``ck_ai_requests_status``, ...), so a later
migration can drop or alter it by name on PostgreSQL and on SQLite alike.

Portable types, one definition each:

- ``UTCDateTime``: ``DateTime(timezone=True)`` that always hands back an aware
  UTC ``datetime``. PostgreSQL stores ``timestamptz``; SQLite has no time zone
  type and would return naive values, so they are read back as UTC (and written
  as UTC). A naive ``datetime`` is refused on write: it is always a bug here.
- ``JSONType``: ``JSON``, ``JSONB`` on PostgreSQL. The ORM does not track
  in-place changes of a JSON value: assign a new list/dict to save a change.
- ``BigIntPK``: ``BIGINT`` on PostgreSQL, ``INTEGER`` on SQLite (only an
  ``INTEGER PRIMARY KEY`` autoincrements there).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that stores and returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: use an aware UTC datetime (utcnow())")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: stored as UTC wall-clock time
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """The declarative base of every table of ai-worker."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class TimestampMixin:
    """``created_at`` / ``updated_at``, aware UTC.

    The ORM sets both from ``utcnow()`` (microsecond precision on every
    dialect); the server defaults cover rows written with plain SQL.
    ``updated_at`` moves on every ORM UPDATE of the row.
    """

    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow, server_default=func.now()
    )
