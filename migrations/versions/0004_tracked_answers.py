"""Codegen-answered requests as tracked runs; attempts written before their call

- ``ai_requests.status`` may be ``awaiting_run`` (answered by a tracked agent run);
  ``ai_requests.agent_run_id`` names that run (no foreign key: the link's integrity is
  ``agent_runs.ai_request_id``'s, a cycle otherwise).
- ``agent_runs.ai_request_id`` -> ``ai_requests.id`` (``ON DELETE SET NULL``), and
  ``agent_runs.repository`` (``owner/repo``, resolved to ``repo_id`` by the creation).
- ``ai_attempts.outcome`` may be ``started`` (in flight) and ``lost`` (its worker died);
  ``ai_attempts.agent_run_id`` and ``ai_attempts.detail`` (why, in words).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
NEW_STATUSES = (*OLD_STATUSES, "awaiting_run")
OLD_OUTCOMES = ("succeeded", "failed", "retry", "superseded", "deferred")
NEW_OUTCOMES = (*OLD_OUTCOMES, "started", "lost")
RUNS_FK = "fk_agent_runs_ai_request_id_ai_requests"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    # SQLite cannot alter a constraint in place: batch mode copies the table (a plain
    # ALTER TABLE on PostgreSQL).
    with op.batch_alter_table("ai_requests") as batch:
        batch.add_column(sa.Column("agent_run_id", sa.BigInteger(), nullable=True))
        batch.drop_constraint(op.f("ck_ai_requests_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_ai_requests_status"), _in_list("status", NEW_STATUSES)
        )
    with op.batch_alter_table("ai_attempts") as batch:
        batch.add_column(sa.Column("agent_run_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))
        batch.drop_constraint(op.f("ck_ai_attempts_outcome"), type_="check")
        batch.create_check_constraint(
            op.f("ck_ai_attempts_outcome"), _in_list("outcome", NEW_OUTCOMES)
        )
    with op.batch_alter_table("agent_runs") as batch:
        batch.add_column(sa.Column("ai_request_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("repository", sa.String(255), nullable=True))
        batch.create_foreign_key(
            op.f(RUNS_FK), "ai_requests", ["ai_request_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_agent_runs_ai_request_id", ["ai_request_id"])


def downgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch:
        batch.drop_index("ix_agent_runs_ai_request_id")
        batch.drop_constraint(op.f(RUNS_FK), type_="foreignkey")
        batch.drop_column("repository")
        batch.drop_column("ai_request_id")
    op.execute("UPDATE ai_attempts SET outcome = 'failed' WHERE outcome IN ('started', 'lost')")
    with op.batch_alter_table("ai_attempts") as batch:
        batch.drop_constraint(op.f("ck_ai_attempts_outcome"), type_="check")
        batch.create_check_constraint(
            op.f("ck_ai_attempts_outcome"), _in_list("outcome", OLD_OUTCOMES)
        )
        batch.drop_column("detail")
        batch.drop_column("agent_run_id")
    op.execute("UPDATE ai_requests SET status = 'failed' WHERE status = 'awaiting_run'")
    with op.batch_alter_table("ai_requests") as batch:
        batch.drop_constraint(op.f("ck_ai_requests_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_ai_requests_status"), _in_list("status", OLD_STATUSES)
        )
        batch.drop_column("agent_run_id")
