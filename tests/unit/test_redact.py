"""The one redaction step (app.core.redact): the shapes of secrets, the configured
secrets, ordinary text left alone, the log filter, the error tree and the CLI's
error line. The end-to-end greps (database, webhooks, CLI, logs) are in
tests/unit/test_no_secret_leaks.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from app.config import Settings, get_settings
from app.core import redact as redaction
from app.core.errors import (
    AIProviderError,
    JobFailedError,
    ProviderAuthenticationError,
    error_for_status,
)
from app.core.redact import REDACTED, RedactingFilter, configured_secrets, install_log_redaction
from app.core.redact import redact as redact_text

OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
FERNET_KEY = "q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c="

SHAPES = [
    # (text, the secret it holds, what must stay)
    (f"Incorrect API key provided: {OPENAI_KEY}. You can find", OPENAI_KEY, "sk-[redacted]."),
    ("key sk-abcdefghijklmnop0123456789 refused", "abcdefghijklmnop0123456789", "sk-[redacted]"),
    (
        "Incorrect API key provided: sk-proj-*************************************abcd.",
        "*****abcd",
        "sk-[redacted]",
    ),
    ("sk-ant-api03-xyzXYZ0123456789abcdef", "xyzXYZ0123456789", "sk-[redacted]"),
    ("Authorization: Bearer abc.def-123456789", "abc.def-123456789", "Bearer [redacted]"),
    ("bearer eyJ0eXAi0123456789abcdef", "eyJ0eXAi0123456789", "bearer [redacted]"),
    ('{"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpwYXNz", "Basic [redacted]"),
    ("authorization=opaque-token-value", "opaque-token-value", "authorization=[redacted]"),
    ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqr", "whsec_[redacted]"),
    (
        "postgresql+psycopg://aiw:s3cr3t-pw@db:5432/aiw: connection refused",
        "s3cr3t-pw",
        "postgresql+psycopg://aiw:[redacted]@db:5432/aiw",
    ),
    ("redis://:redis-pass-1@127.0.0.1:6379/0", "redis-pass-1", "redis://:[redacted]@127.0.0.1"),
    (
        "clone https://ghp_abcdefghijklmnopqrstuvwxyz012345@github.com/o/r.git failed",
        "ghp_abcdefghijklmnopqrstuvwxyz012345",
        "https://[redacted]@github.com/o/r.git",
    ),
    ("token github_pat_11ABCDEFG0123456789_abcdefghij", "11ABCDEFG0123456789", REDACTED),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9",
        "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        "jwt [redacted]",
    ),
    ("GET /v1?api_key=abcd1234efgh&page=2", "abcd1234efgh", "api_key=[redacted]&page=2"),
    ('{"access_token": "ya29.a0AfH6SMBx"}', "ya29.a0AfH6SMBx", '"access_token": "[redacted]"'),
    ("login failed: password=hunter2.", "hunter2", "password=[redacted]."),
    ("Incorrect API key provided: abc123def456ghi. Check", "abc123def456ghi", "[redacted]. Check"),
    ("Codegen POST /run: Invalid token: cg_abcdefgh12345", "cg_abcdefgh12345", "token: [redacted]"),
    ("client_secret: 'aVeryLongSecretWithoutDigitsAtAll'", "aVeryLongSecret", "[redacted]"),
]

ORDINARY = [
    "Bearer authentication required",
    "bearer token missing",
    "Authorization header missing",
    "token: expired",
    "the secret: is out",
    "max_tokens: must be at most 4096",
    "This model's maximum context length is 50 tokens. However, your messages resulted in "
    "51 tokens. Please reduce the length of the messages.",
    "Rate limit reached for requests per min (RPM). Please try again later. [type=rate_limit]",
    "You exceeded your current quota, please check your plan and billing details.",
    "Key (idempotency_key)=(job-42) already exists",
    "skip sk-learn, use https://platform.openai.com/account/api-keys (HTTP 401)",
    "Codegen GET /v1/organizations/5/agent/run/77: HTTP 404 Not Found",
    "no answer within 2.0s",
    "connection failed: ConnectError",
    "webhook delivery to https://example.com/hooks?x=1 failed: HTTP 500 Internal Server Error",
    "",
]


@pytest.mark.parametrize(("text", "secret", "kept"), SHAPES)
def test_the_shapes_of_a_secret_are_replaced(text: str, secret: str, kept: str) -> None:
    clean = redact_text(text, Settings())
    assert secret not in clean
    assert kept in clean, clean
    assert redact_text(clean, Settings()) == clean  # twice changes nothing more


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text, Settings()) == text


def test_none_stays_none() -> None:
    assert redact_text(None) is None
    assert redact_text(None, Settings()) is None


def test_the_configured_secrets_are_replaced_wherever_they_are() -> None:
    settings = Settings(
        openai_api_key="plain-openai-key-0123",  # no sk- shape: only known as configured
        codegen_token="cgtok9876543210",
        flower_basic_auth="admin:flowerpass,ops:opspassword9",
        aiw_secret_key=f"{FERNET_KEY},oldkey-abcdefgh-0123",
        database_url="postgresql+psycopg://aiw:p%40ss%2Fdb1@db/aiw",
        celery_broker_url="redis://:brokerpw42@redis:6379/0",
        redis_url="rediss://default:redispw42@cache:6380/1",
    )
    secrets = set(configured_secrets(settings))
    assert {
        "plain-openai-key-0123", "cgtok9876543210", "flowerpass", "opspassword9", FERNET_KEY,
        "oldkey-abcdefgh-0123", "p%40ss%2Fdb1", "p@ss/db1", "brokerpw42", "redispw42",
    } <= secrets  # fmt: skip
    text = (
        "echo plain-openai-key-0123 and cgtok9876543210 (flowerpass/opspassword9), keys "
        f"{FERNET_KEY} oldkey-abcdefgh-0123; urls p%40ss%2Fdb1 p@ss/db1 brokerpw42 redispw42"
    )
    clean = redact_text(text, settings)
    for secret in secrets:
        assert secret not in clean, secret
    assert clean.startswith("echo [redacted] and [redacted] ([redacted]/[redacted]), keys")


def test_a_short_configured_secret_is_replaced_only_as_a_word() -> None:
    settings = Settings(flower_basic_auth="aiw:pass,x:abc")
    assert configured_secrets(settings) == ("pass",)  # 3 characters cannot be hidden
    assert redact_text("pass, passage, bypass, pass", settings) == (
        "[redacted], passage, bypass, [redacted]"
    )


def test_without_settings_the_process_settings_are_used_once_loaded(
    env: Callable[..., None],
) -> None:
    env(OPENAI_API_KEY="plain-process-key-77")
    get_settings.cache_clear()
    assert redact_text("echo plain-process-key-77") == "echo plain-process-key-77"  # not loaded
    get_settings()
    assert redact_text("echo plain-process-key-77") == "echo [redacted]"


def test_the_pattern_of_a_settings_object_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, ...]] = []
    real = redaction._secrets_pattern

    def counting(secrets: tuple[str, ...]) -> object:
        built.append(secrets)
        return real(secrets)

    monkeypatch.setattr(redaction, "_secrets_pattern", counting)
    settings = Settings(codegen_token="cgtok9876543210")
    for _ in range(5):
        assert redact_text("cgtok9876543210", settings) == REDACTED
    assert len(built) == 1
    settings.codegen_token = None  # changed in place: built again
    assert redact_text("cgtok9876543210", settings) == "cgtok9876543210"
    assert len(built) == 2


def test_provider_errors_are_redacted_when_made(env: Callable[..., None]) -> None:
    env(OPENAI_API_KEY="plain-process-key-77")
    get_settings()
    error = error_for_status(
        401,
        f"Incorrect API key provided: {OPENAI_KEY} / plain-process-key-77",
        provider_name="openai",
        request_id="req_plain-process-key-77",
    )
    assert isinstance(error, ProviderAuthenticationError)
    for shown in (str(error), error.message, repr(error), str(error.to_dict()), error.request_id):
        assert OPENAI_KEY not in str(shown) and "plain-process-key-77" not in str(shown)
    assert str(error) == (
        "[openai] Incorrect API key provided: sk-[redacted] / [redacted] (HTTP 401)"
    )
    failed = JobFailedError("ProviderAuthenticationError", f"key {OPENAI_KEY}", job_id="j1")
    assert OPENAI_KEY not in str(failed) and OPENAI_KEY not in (failed.message or "")
    assert AIProviderError(f"echo {OPENAI_KEY}").message == "echo sk-[redacted]"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.redact")
    logger.propagate = False
    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        assert install_log_redaction(logger) == 1
        assert install_log_redaction(logger) == 0  # once per handler
        logger.debug("calling with %s", f"Bearer {OPENAI_KEY}")
        logger.info("plain message, nothing to hide: %d tokens", 12)
        try:
            raise RuntimeError(f"boom {OPENAI_KEY}")
        except RuntimeError:
            logger.exception("failed with %r", {"api_key": OPENAI_KEY})
        logger.warning("stack", stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = "\n".join(handler.format(r) for r in records)
    assert OPENAI_KEY not in text
    assert "calling with Bearer sk-[redacted]" in text
    assert "plain message, nothing to hide: 12 tokens" in text
    assert "RuntimeError: boom sk-[redacted]" in text
    assert records[1].args == (12,)  # a record with nothing to hide is left as it was


def test_a_filter_with_its_own_settings() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", ("cgtok9876543210",), None)
    assert RedactingFilter(Settings(codegen_token="cgtok9876543210")).filter(record)
    assert record.getMessage() == "key [redacted]"


def test_the_worker_installs_the_filter_on_its_log_handlers() -> None:
    from workers.signals import _logging

    root = logging.getLogger()
    before = {id(h): list(h.filters) for h in root.handlers}
    names = ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "urllib3")
    noisy = {name: logging.getLogger(name).level for name in names}
    try:
        _logging()
        assert root.handlers
        for handler in root.handlers:
            assert any(isinstance(f, RedactingFilter) for f in handler.filters), handler
    finally:
        for handler in root.handlers:
            handler.filters[:] = before.get(id(handler), [])
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def test_the_cli_error_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli.boundary import friendly

    @friendly
    def boom() -> None:
        raise RuntimeError(f"proxy said: Authorization: Bearer {OPENAI_KEY}")

    with pytest.raises(SystemExit) as exited:
        boom()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert OPENAI_KEY not in err
    assert "RuntimeError: proxy said: Authorization: Bearer [redacted] (run" in err
