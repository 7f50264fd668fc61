"""No secret in any stored or sent error (issue 9, item 1), end to end on SQLite.

A provider that echoes the key it was sent in every field of its error (the fake
OpenAI server's ``echo_key_in_errors``: message, type, code, param and x-request-id;
Codegen's 401 body) makes a job and an agent run fail; then the whole database is
dumped (every column of every table), a webhook receiver's bodies, the ``aiw``
command line's outputs and the logs at DEBUG are searched: the key is nowhere.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.core.lease import reset_leases
from app.core.redact import RedactingFilter
from app.db import agent_run_models, models, webhook_models  # noqa: F401 - every table
from app.db.base import Base
from app.db.session import session_scope
from app.jobs import get_agent_run, get_attempts, get_job, submit, submit_agent_run
from app.jobs.agent_runs.actions import create_run
from app.jobs.agent_runs.codegen import reset_gateways
from app.jobs.agent_runs.poller import poll
from app.jobs.runner import reset_providers, run_job
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import register_endpoint
from app.webhooks.delivery import deliver
from tests.plugins.cli import clean_env, run_aiw
from tests.plugins.webhooks import RecordingPublisher

# One key with the shape of an OpenAI key, one that only the configuration knows.
SHAPED_KEY = "sk-proj-LeAkEd0123456789abcdefABCDEF-ghijkl"
PLAIN_KEY = "aiw-plain-key-0f9e8d7c6b5a4321"


def database_dump() -> str:
    """Every value of every column of every table, as text."""
    lines = []
    with session_scope() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                lines.append(f"{table.name}: {json.dumps(dict(row), default=str)}")
    return "\n".join(lines)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG, through the filter the worker and ``aiw`` put on their
    handlers (third-party loggers, e.g. the openai SDK's request id line, included)."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())
    yield caplog


@pytest.mark.parametrize("key", [SHAPED_KEY, PLAIN_KEY], ids=["sk-shaped", "configured-only"])
def test_a_key_echoed_by_the_provider_is_nowhere(
    key: str,
    webhook_db: RecordingPublisher,
    receiver: WebhookReceiver,
    fake_openai: FakeOpenAIServer,
    env: Callable[..., None],
    migrated_sqlite_url: str,
    logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    fake_openai.api_key = "the-right-key-is-another-one"
    fake_openai.echo_key_in_errors = True
    env(
        OPENAI_API_KEY=key,
        OPENAI_BASE_URL=fake_openai.url,
        OPENAI_TIMEOUT=2,
        OPENAI_MAX_RETRIES=0,
        PREFER_CODEGEN="false",
    )
    reset_providers()
    _, secret = register_endpoint(receiver.url, ["ai_request.*"])
    receiver.secret = secret
    try:
        handle = submit("hello", tags=["leak"])
        assert run_job(handle.id).action == "done"
        for delivery_id in webhook_db.delivery_ids():
            assert deliver(uuid.UUID(delivery_id)).action == "done"
    finally:
        reset_providers()

    # The key was refused, in an error that echoed it ...
    assert fake_openai.request_count("/chat/completions") == 1
    job = get_job(handle.id)
    assert job.status == "failed" and job.error_type == "ProviderAuthenticationError"
    [attempt] = get_attempts(handle.id)
    assert attempt.http_status == 401

    # ... and it is nowhere: the database,
    dump = database_dump()
    assert "ai_requests:" in dump and "ai_attempts:" in dump and "webhook_events:" in dump
    assert key not in dump
    # the webhook receiver's bodies (ai_request.failed, signed and verified),
    [got] = receiver.verified()
    assert got.event_type == "ai_request.failed"
    assert key.encode() not in got.body and key not in json.dumps(got.headers)
    # the logs at DEBUG,
    assert logs.records and key not in logs.text
    assert all(key not in r.getMessage() for r in logs.records)
    # and the command line's outputs.
    cli_env = clean_env(
        DATABASE_URL=migrated_sqlite_url,
        AIW_DATA_DIR=tmp_path / "data",
        OPENAI_API_KEY=key,
        OPENAI_BASE_URL=fake_openai.url,
        OPENAI_MAX_RETRIES=0,
        AIW_SECRET_KEY=str(_secret_key()),
    )
    for args in (
        ("show", str(handle.id), "--json"),
        ("-v", "show", str(handle.id)),
        ("jobs", "--json"),
        ("jobs", "--status", "failed"),
        ("webhooks", "deliveries", "--json"),
        ("-v", "providers", "--validate", "--json"),
    ):
        result = run_aiw(*args, env=cli_env, cwd=tmp_path)
        assert result.code == 0, (args, result.err)
        assert key not in result.out and key not in result.err, args
    # What is left says what happened, the key replaced.
    shown = run_aiw("show", str(handle.id), "--json", env=cli_env, cwd=tmp_path).json()
    assert shown["error_message"].startswith("[openai] Incorrect API key provided: ")
    assert "[redacted]" in shown["error_message"]
    assert "[redacted]" in shown["attempts"][0]["error_message"]
    assert "[redacted]" in got.data["error"]["message"]


def _secret_key() -> str:
    from app.config import get_settings

    key = get_settings().aiw_secret_key
    assert key is not None
    return key.get_secret_value()


@pytest.fixture
def agent_bed(
    migrated_sqlite_url: str, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> Iterator[FakeCodegenServer]:
    env(
        DATABASE_URL=migrated_sqlite_url,
        AIW_AGENT_POLL_INTERVAL=0.05,
        AIW_AGENT_POLL_MAX_INTERVAL=1,
        CODEGEN_MAX_RETRIES=0,
    )
    from app.core.publisher import set_publisher

    set_publisher(RecordingPublisher())
    for reset in (reset_budgets, reset_gateways, reset_cooldowns, reset_leases):
        reset()
    yield codegen_env
    set_publisher(None)
    for reset in (reset_budgets, reset_gateways, reset_cooldowns, reset_leases):
        reset()


def _echoing_401(token: str) -> Fault:
    return Fault.status_code(
        401, {"detail": f"Invalid token: {token}", "token": token, "message": f"bad {token}"}
    )


def test_a_token_echoed_by_codegen_is_nowhere(
    agent_bed: FakeCodegenServer, logs: pytest.LogCaptureFixture
) -> None:
    token = agent_bed.token
    # A refused creation: error_message, its event's detail, the agent_run.failed payload.
    agent_bed.faults.push(_echoing_401(token))
    refused = submit_agent_run("No entry")
    assert create_run(refused.id).action == "done"
    assert get_agent_run(refused.id).error_type == "ProviderAuthenticationError"
    # A refused poll: last_poll_error.
    polled = submit_agent_run("Polled")
    assert create_run(polled.id).action == "done"
    agent_bed.faults.push(_echoing_401(token), times=5)
    time.sleep(0.1)  # due
    poll()
    dump = database_dump()
    assert "agent_runs:" in dump and "agent_run_events:" in dump
    assert token not in dump
    assert key_free(logs, token)
    assert "[redacted]" in (get_agent_run(refused.id).error_message or "")
    assert "[redacted]" in (get_agent_run(polled.id).last_poll_error or "")


def key_free(logs: pytest.LogCaptureFixture, secret: str) -> bool:
    return secret not in logs.text and all(secret not in r.getMessage() for r in logs.records)
