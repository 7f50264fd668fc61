"""Taking rows that need a broker message, once, even with several sweeps at once.

Jobs and webhook deliveries both keep ``published_at``: when their last message
went to the broker (NULL while a long wait is parked in the database). A sweep
takes the rows that need a message with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL;
SQLite serialises writers anyway) and stamps them in the same transaction, so a
second sweep running at the same moment skips them. Which rows need a message is
the claim machine's rule (``app.db.claims.needs_message``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update

from app.db.session import session_scope


def take_for_publishing(
    model: Any,
    condition: ColumnElement[bool],
    order_by: Any,
    limit: int,
    now: datetime,
) -> list[Any]:
    """Ids of up to ``limit`` rows of ``model`` matching ``condition``, stamped published now."""
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(model.id)
                .where(condition)
                .order_by(order_by)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(
                update(model)
                .where(model.id.in_(ids))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids
