"""A job's priority: ``high``, ``normal`` (the default) or ``low``.

The priority is a column of the job (``ai_requests.priority``), so the sweep, a retry
and a hand-back keep it, and it travels with each of the job's broker messages. How a
broker orders them is the Celery side's business (``workers.publisher``: Redis
priority steps of the one ``ai_requests`` queue).
"""

from __future__ import annotations

from app.core.errors import InvalidRequestError
from app.db.tables import Priority

HIGH = Priority.HIGH.value
NORMAL = Priority.NORMAL.value
LOW = Priority.LOW.value

#: Every priority, most urgent first.
PRIORITIES: tuple[str, ...] = (HIGH, NORMAL, LOW)


def check_priority(value: object) -> str:
    """``value`` as a priority, else ``InvalidRequestError`` naming the three."""
    if not isinstance(value, str) or value not in PRIORITIES:
        raise InvalidRequestError(
            f"priority must be one of {', '.join(map(repr, PRIORITIES))}, got {value!r}"
        )
    return value


__all__ = ["HIGH", "LOW", "NORMAL", "PRIORITIES", "check_priority"]
