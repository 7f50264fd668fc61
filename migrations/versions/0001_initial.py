"""initial: ai_requests, ai_attempts, ai_usage, artifacts

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in app/db/base.py: a revision never imports app code.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

JOB_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "retry", "superseded", "deferred")


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "ai_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(32), server_default="ai_request", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_requested", sa.String(64), nullable=True),
        sa.Column("provider_chain", JSON, nullable=False),
        sa.Column("provider_index", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_used", sa.String(64), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("subject", JSON, nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retries_on_provider", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("callback", sa.String(255), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_requests")),
        sa.CheckConstraint(_in_list("status", JOB_STATUSES), name=op.f("ck_ai_requests_status")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ai_requests_idempotency_key")),
    )
    op.create_index(
        "ix_ai_requests_status_next_attempt_at", "ai_requests", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_ai_requests_status_lease_expires_at", "ai_requests", ["status", "lease_expires_at"]
    )
    op.create_index(
        "ix_ai_requests_status_published_at", "ai_requests", ["status", "published_at"]
    )
    op.create_index("ix_ai_requests_created_at", "ai_requests", ["created_at"])
    op.create_index(
        "ix_ai_requests_provider_used_created_at", "ai_requests", ["provider_used", "created_at"]
    )

    op.create_table(
        "ai_attempts",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("retry_after_s", sa.Float(), nullable=True),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("provider_request_id", sa.String(255), nullable=True),
        sa.Column("started_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_attempts")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["ai_requests.id"],
            name=op.f("fk_ai_attempts_request_id_ai_requests"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("request_id", "number", name=op.f("uq_ai_attempts_request_id_number")),
        sa.CheckConstraint(
            _in_list("outcome", ATTEMPT_OUTCOMES), name=op.f("ck_ai_attempts_outcome")
        ),
    )

    op.create_table(
        "ai_usage",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("attempt_id", BIGINT_PK, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cached_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Numeric(18, 10), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_usage")),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["ai_attempts.id"],
            name=op.f("fk_ai_usage_attempt_id_ai_attempts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["ai_requests.id"],
            name=op.f("fk_ai_usage_request_id_ai_requests"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("attempt_id", name=op.f("uq_ai_usage_attempt_id")),
    )
    op.create_index("ix_ai_usage_request_id", "ai_usage", ["request_id"])
    op.create_index("ix_ai_usage_created_at", "ai_usage", ["created_at"])
    op.create_index(
        "ix_ai_usage_provider_model_created_at", "ai_usage", ["provider", "model", "created_at"]
    )

    op.create_table(
        "artifacts",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column("agent_run_id", BIGINT_PK, nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("data", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["ai_requests.id"],
            name=op.f("fk_artifacts_request_id_ai_requests"),
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_artifacts_request_id", "artifacts", ["request_id"])
    op.create_index("ix_artifacts_agent_run_id", "artifacts", ["agent_run_id"])


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("ai_usage")
    op.drop_table("ai_attempts")
    op.drop_table("ai_requests")
