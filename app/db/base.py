"""The declarative base of the ORM models, and the timestamp mixin.

The tables' ``MetaData`` (its naming convention) and the portable column types live in
``app.db.types`` (SQLAlchemy Core only) and are re-exported here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db.types import METADATA, NAMING_CONVENTION, BigIntPK, JSONType, UTCDateTime, utcnow


class Base(DeclarativeBase):
    """The declarative base of every table of ai-worker."""

    metadata = METADATA
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


__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "BigIntPK",
    "JSONType",
    "TimestampMixin",
    "UTCDateTime",
    "utcnow",
]
