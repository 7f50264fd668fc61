"""What the tables share and the ORM does not need: the ``MetaData`` (with its naming
convention), the portable column types and ``utcnow``. SQLAlchemy Core only, so a path
that writes one row with Core (``aiw submit``: ``app.db.tables``) never imports the ORM.

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

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Every table of ai-worker (``app.db.base.Base.metadata`` is this one).
METADATA = MetaData(naming_convention=NAMING_CONVENTION)


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

__all__ = ["METADATA", "NAMING_CONVENTION", "BigIntPK", "JSONType", "UTCDateTime", "utcnow"]
