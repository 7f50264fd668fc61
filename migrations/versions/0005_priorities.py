"""Job priorities

- ``ai_requests.priority``: ``high``, ``normal`` (the default, also of every job that
  exists already) or ``low``; kept so the sweep, retries and hand-backs publish a
  job's messages at its priority.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ai_requests") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(8), nullable=False, server_default="normal")
        )
        batch.create_check_constraint(
            op.f("ck_ai_requests_priority"), "priority IN ('high', 'normal', 'low')"
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_requests") as batch:
        batch.drop_constraint(op.f("ck_ai_requests_priority"), type_="check")
        batch.drop_column("priority")
