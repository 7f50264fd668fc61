"""Alembic on PostgreSQL and SQLite: up, down, up again; the schema matches the models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, pool

from app.db import migrate
from app.db.base import Base
from app.db.session import create_engine_for

TABLES = {
    "ai_requests", "ai_attempts", "ai_usage", "artifacts",
    "webhook_endpoints", "webhook_events", "webhook_deliveries", "webhook_attempts",
    "agent_runs", "agent_run_events", "budgets", "budget_reservations",
}  # fmt: skip

COLUMNS = {
    "ai_requests": {
        "id", "kind", "status", "provider_requested", "provider_chain", "provider_index",
        "provider_used", "model", "agent_run_id", "prompt", "system_prompt", "parameters",
        "tags", "subject",
        "result", "error_type", "error_message", "attempt_count", "retries_on_provider",
        "next_attempt_at", "lease_expires_at", "claim_token", "published_at", "idempotency_key",
        "callback", "priority",
        "created_at", "updated_at", "started_at", "finished_at",
    },
    "ai_attempts": {
        "id", "request_id", "number", "provider", "model", "outcome", "http_status",
        "latency_s", "retry_after_s", "error_type", "error_message", "provider_request_id",
        "agent_run_id", "detail", "started_at", "finished_at",
    },
    "ai_usage": {
        "id", "attempt_id", "request_id", "provider", "model", "prompt_tokens",
        "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens", "cost_usd",
        "latency_s", "created_at",
    },
    "artifacts": {
        "id", "request_id", "agent_run_id", "kind", "name", "content", "data", "created_at",
    },
    "webhook_endpoints": {
        "id", "url", "description", "event_types", "secret_encrypted", "enabled",
        "disabled_reason", "disabled_at", "failing_since", "created_at", "updated_at",
    },
    "webhook_events": {"id", "type", "payload", "created_at"},
    "webhook_deliveries": {
        "id", "event_id", "endpoint_id", "status", "attempt_count", "next_attempt_at",
        "published_at", "claim_token", "lease_expires_at", "last_status_code", "last_error",
        "delivered_at", "created_at", "updated_at",
    },
    "webhook_attempts": {
        "id", "delivery_id", "number", "manual", "status_code", "latency_s", "error",
        "response_snippet", "created_at",
    },
    "agent_runs": {
        "id", "remote_id", "state", "remote_status", "source", "marker", "ai_request_id",
        "prompt", "repo_id", "repository",
        "metadata", "model", "agent_type", "tags", "images", "pending_prompt", "callbacks",
        "webhook", "next_poll_at", "poll_interval", "polls_since_change", "poll_failures",
        "last_polled_at", "last_status_change_at", "last_poll_error", "deadline_at",
        "stuck_at", "logs_fetched_at", "resumed_at", "resume_count", "claim_token",
        "lease_expires_at", "next_attempt_at", "published_at", "attempt_count", "retries",
        "outcome_unknown", "result", "summary", "web_url", "error_type", "error_message",
        "finished_at", "created_at", "updated_at",
    },
    "agent_run_events": {
        "id", "agent_run_id", "kind", "old_status", "new_status", "detail", "created_at",
    },
    "budgets": {
        "id", "name", "tag", "period", "policy", "cap_usd", "window_start", "spent_usd",
        "reserved_usd", "threshold_window", "exceeded_window", "created_at", "updated_at",
    },
    "budget_reservations": {
        "attempt_id", "budget_id", "request_id", "window_start", "amount_usd", "created_at",
    },
}  # fmt: skip

INDEXES = {
    "ai_requests": {
        ("ix_ai_requests_status_next_attempt_at", ("status", "next_attempt_at")),
        ("ix_ai_requests_status_lease_expires_at", ("status", "lease_expires_at")),
        ("ix_ai_requests_status_published_at", ("status", "published_at")),
        ("ix_ai_requests_created_at", ("created_at",)),
        ("ix_ai_requests_provider_used_created_at", ("provider_used", "created_at")),
    },
    "ai_attempts": set(),
    "ai_usage": {
        ("ix_ai_usage_request_id", ("request_id",)),
        ("ix_ai_usage_created_at", ("created_at",)),
        ("ix_ai_usage_provider_model_created_at", ("provider", "model", "created_at")),
    },
    "artifacts": {
        ("ix_artifacts_request_id", ("request_id",)),
        ("ix_artifacts_agent_run_id", ("agent_run_id",)),
    },
    "webhook_endpoints": set(),
    "webhook_events": {("ix_webhook_events_created_at", ("created_at",))},
    "webhook_deliveries": {
        ("ix_webhook_deliveries_status_next_attempt_at", ("status", "next_attempt_at")),
        ("ix_webhook_deliveries_endpoint_id_created_at", ("endpoint_id", "created_at")),
        ("ix_webhook_deliveries_created_at", ("created_at",)),
    },
    "webhook_attempts": set(),
    "agent_runs": {
        ("ix_agent_runs_state_next_poll_at", ("state", "next_poll_at")),
        ("ix_agent_runs_state_next_attempt_at", ("state", "next_attempt_at")),
        ("ix_agent_runs_created_at", ("created_at",)),
        ("ix_agent_runs_ai_request_id", ("ai_request_id",)),
    },
    "agent_run_events": {("ix_agent_run_events_agent_run_id_id", ("agent_run_id", "id"))},
    "budgets": set(),
    "budget_reservations": {("ix_budget_reservations_request_id", ("request_id",))},
}

UNIQUES = {
    "ai_requests": {("uq_ai_requests_idempotency_key", ("idempotency_key",))},
    "ai_attempts": {("uq_ai_attempts_request_id_number", ("request_id", "number"))},
    "ai_usage": {("uq_ai_usage_attempt_id", ("attempt_id",))},
    "artifacts": set(),
    "webhook_endpoints": set(),
    "webhook_events": set(),
    "webhook_deliveries": {
        ("uq_webhook_deliveries_event_id_endpoint_id", ("event_id", "endpoint_id")),
    },
    "webhook_attempts": {("uq_webhook_attempts_delivery_id_number", ("delivery_id", "number"))},
    "agent_runs": {("uq_agent_runs_remote_id", ("remote_id",))},
    "agent_run_events": set(),
    "budgets": {("uq_budgets_name", ("name",))},
    "budget_reservations": set(),
}

FOREIGN_KEYS = {
    "ai_attempts": {("request_id", "ai_requests", "CASCADE")},
    "ai_usage": {
        ("attempt_id", "ai_attempts", "CASCADE"),
        ("request_id", "ai_requests", "CASCADE"),
    },
    "artifacts": {
        ("request_id", "ai_requests", "CASCADE"),
        ("agent_run_id", "agent_runs", "CASCADE"),
    },
    "webhook_deliveries": {
        ("event_id", "webhook_events", "CASCADE"),
        ("endpoint_id", "webhook_endpoints", "CASCADE"),
    },
    "webhook_attempts": {("delivery_id", "webhook_deliveries", "CASCADE")},
    "agent_runs": {("ai_request_id", "ai_requests", "SET NULL")},
    "agent_run_events": {("agent_run_id", "agent_runs", "CASCADE")},
    "budget_reservations": {
        ("attempt_id", "ai_attempts", "CASCADE"),
        ("budget_id", "budgets", "CASCADE"),
    },
}


def _tables(url: str) -> set[str]:
    engine = create_engine_for(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _check_schema(url: str) -> None:
    engine = create_engine_for(url, poolclass=pool.NullPool)
    try:
        insp = inspect(engine)
        assert set(insp.get_table_names()) == TABLES | {"alembic_version"}
        for table, columns in COLUMNS.items():
            assert {c["name"] for c in insp.get_columns(table)} == columns, table
            indexes = {
                (i["name"], tuple(i["column_names"]))
                for i in insp.get_indexes(table)
                if "duplicates_constraint" not in i  # PostgreSQL: the index behind a UNIQUE
            }
            assert indexes == INDEXES[table], table
            uniques = {
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            }
            assert uniques == UNIQUES[table], table
            fks = {
                (fk["constrained_columns"][0], fk["referred_table"], fk["options"].get("ondelete"))
                for fk in insp.get_foreign_keys(table)
            }
            assert fks == FOREIGN_KEYS.get(table, set()), table
        checks = {c["name"] for c in insp.get_check_constraints("ai_requests")}
        assert "ck_ai_requests_status" in checks
        assert "ck_ai_requests_priority" in checks
        checks = {c["name"] for c in insp.get_check_constraints("webhook_deliveries")}
        assert "ck_webhook_deliveries_status" in checks
        checks = {c["name"] for c in insp.get_check_constraints("agent_runs")}
        assert "ck_agent_runs_state" in checks
        checks = {c["name"] for c in insp.get_check_constraints("agent_run_events")}
        assert "ck_agent_run_events_kind" in checks
        checks = {c["name"] for c in insp.get_check_constraints("budgets")}
        assert checks >= {"ck_budgets_period", "ck_budgets_policy", "ck_budgets_cap_positive"}
        # The schema and the models agree: autogenerate finds nothing to do.
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
    _check_schema(url)

    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert _tables(url) == set()

    migrate.upgrade(url)
    _check_schema(url)


@pytest.mark.integration
def test_upgrade_downgrade_upgrade_on_postgresql(pg_database_factory: Callable[[], str]) -> None:
    _round_trip(pg_database_factory())


def test_upgrade_downgrade_upgrade_on_sqlite(sqlite_url: str) -> None:
    _round_trip(sqlite_url)


def test_default_url_is_the_embedded_sqlite_file(env: Callable[..., None], tmp_path) -> None:  # type: ignore[no-untyped-def]
    env(AIW_DATA_DIR=str(tmp_path / "data"))
    migrate.upgrade()
    assert (tmp_path / "data" / "aiw.sqlite3").is_file()
    assert migrate.current() == migrate.head()


def test_offline_sql_for_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    from alembic import command

    command.upgrade(migrate.alembic_config("postgresql+psycopg://u@h/db"), "head", sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE ai_requests" in out
    assert "JSONB" in out
    assert "CONSTRAINT uq_ai_usage_attempt_id UNIQUE (attempt_id)" in out
