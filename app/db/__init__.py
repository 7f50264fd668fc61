"""The database layer: models, engine/session, migrations (``app.db.migrate``).

PostgreSQL in production, SQLite embedded by default; see ``app.db.session``.
Nothing here connects at import time.
"""

from app.db.base import Base, TimestampMixin, utcnow
from app.db.models import (
    AIRequestRow,
    ArtifactRow,
    AttemptOutcome,
    AttemptRow,
    JobStatus,
    UsageRow,
)
from app.db.session import (
    database_url,
    dispose_engines,
    get_engine,
    get_sessionmaker,
    session_scope,
)

__all__ = [
    "AIRequestRow",
    "ArtifactRow",
    "AttemptOutcome",
    "AttemptRow",
    "Base",
    "JobStatus",
    "TimestampMixin",
    "UsageRow",
    "database_url",
    "dispose_engines",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
    "utcnow",
]
