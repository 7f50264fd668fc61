"""The database layer: PostgreSQL in production, SQLite embedded by default.

- ``types``: the tables' ``MetaData`` and portable column types (Core);
- ``tables``: ``ai_requests`` as a Core ``Table``, the job's status and priority;
- ``base``, ``models``, ``agent_run_models``, ``webhook_models``, ``budget_models``:
  the ORM models (SQLAlchemy 2, ``Mapped[]``);
- ``session``: engines and sessions (``session_scope``), built lazily;
- ``migrate``: the Alembic migrations from Python.

Nothing here connects at import time, and importing the package imports none of its
modules: ``aiw submit`` loads ``tables`` and ``session``, never the ORM.
"""
