"""Spend budgets: ``budgets`` (a cap per UTC day or month, global or per tag) and
``budget_reservations`` (what an attempt holds on a budget until it is settled).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USD = sa.Numeric(18, 10)
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("tag", sa.String(255), nullable=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("policy", sa.String(8), nullable=False),
        sa.Column("cap_usd", USD, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_usd", USD, nullable=False, server_default="0"),
        sa.Column("reserved_usd", USD, nullable=False, server_default="0"),
        sa.Column("threshold_window", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exceeded_window", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("name", name=op.f("uq_budgets_name")),
        sa.CheckConstraint("period IN ('day', 'month')", name=op.f("ck_budgets_period")),
        sa.CheckConstraint("policy IN ('wait', 'fail')", name=op.f("ck_budgets_policy")),
        sa.CheckConstraint("cap_usd > 0", name=op.f("ck_budgets_cap_positive")),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("attempt_id", BIGINT, nullable=False),
        sa.Column("budget_id", BIGINT, nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_usd", USD, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("attempt_id", "budget_id", name=op.f("pk_budget_reservations")),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["ai_attempts.id"],
            name=op.f("fk_budget_reservations_attempt_id_ai_attempts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_reservations_budget_id_budgets"),
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_budget_reservations_request_id", "budget_reservations", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_budget_reservations_request_id", table_name="budget_reservations")
    op.drop_table("budget_reservations")
    op.drop_table("budgets")
