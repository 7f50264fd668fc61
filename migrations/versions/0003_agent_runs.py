"""agent runs: agent_runs, agent_run_events, artifacts.agent_run_id -> agent_runs

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in app/db/base.py: a revision never imports app code.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

STATES = ("creating", "resuming", "active", "finished", "stuck", "create_failed")
EVENT_KINDS = ("status_changed", "stuck", "resumed", "resume_failed", "create_failed")
ARTIFACTS_FK = "fk_artifacts_agent_run_id_agent_runs"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "agent_runs",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("remote_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("remote_status", sa.String(64), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("marker", sa.Uuid(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("repo_id", sa.BigInteger(), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("agent_type", sa.String(32), nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("images", JSON, nullable=True),
        sa.Column("pending_prompt", sa.Text(), nullable=True),
        sa.Column("callbacks", JSON, nullable=False),
        sa.Column("webhook", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("next_poll_at", TIMESTAMP, nullable=True),
        sa.Column("poll_interval", sa.Float(), nullable=False),
        sa.Column("polls_since_change", sa.Integer(), server_default="0", nullable=False),
        sa.Column("poll_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_polled_at", TIMESTAMP, nullable=True),
        sa.Column("last_status_change_at", TIMESTAMP, nullable=True),
        sa.Column("last_poll_error", sa.Text(), nullable=True),
        sa.Column("deadline_at", TIMESTAMP, nullable=True),
        sa.Column("stuck_at", TIMESTAMP, nullable=True),
        sa.Column("logs_fetched_at", TIMESTAMP, nullable=True),
        sa.Column("resumed_at", TIMESTAMP, nullable=True),
        sa.Column("resume_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("outcome_unknown", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("web_url", sa.String(2048), nullable=True),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
        sa.UniqueConstraint("remote_id", name=op.f("uq_agent_runs_remote_id")),
        sa.CheckConstraint(_in_list("state", STATES), name=op.f("ck_agent_runs_state")),
    )
    op.create_index("ix_agent_runs_state_next_poll_at", "agent_runs", ["state", "next_poll_at"])
    op.create_index(
        "ix_agent_runs_state_next_attempt_at", "agent_runs", ["state", "next_attempt_at"]
    )
    op.create_index("ix_agent_runs_created_at", "agent_runs", ["created_at"])

    op.create_table(
        "agent_run_events",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("agent_run_id", BIGINT_PK, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("old_status", sa.String(64), nullable=True),
        sa.Column("new_status", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_run_events")),
        sa.ForeignKeyConstraint(
            ["agent_run_id"],
            ["agent_runs.id"],
            name=op.f("fk_agent_run_events_agent_run_id_agent_runs"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(_in_list("kind", EVENT_KINDS), name=op.f("ck_agent_run_events_kind")),
    )
    op.create_index(
        "ix_agent_run_events_agent_run_id_id", "agent_run_events", ["agent_run_id", "id"]
    )

    # SQLite cannot add a constraint to a table: batch mode copies it (a no-op wrapper
    # on PostgreSQL, which runs a plain ALTER TABLE).
    with op.batch_alter_table("artifacts") as batch:
        batch.create_foreign_key(
            ARTIFACTS_FK, "agent_runs", ["agent_run_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_constraint(ARTIFACTS_FK, type_="foreignkey")
    op.drop_table("agent_run_events")
    op.drop_table("agent_runs")
