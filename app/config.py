"""One Settings object, read from the environment (and an optional ``.env`` file).

Nothing here connects to anything: ``get_settings()`` only parses and checks
values. A bad value fails at start with an error that names the environment
variable, e.g. ``OPENAI_TIMEOUT: Input should be a valid number``. Secrets are
``SecretStr``: their ``repr``/``str`` show ``**********``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".aiw-data")


class ConfigError(ValueError):
    """A configuration value is missing or malformed. The message names the variable."""


class Settings(BaseSettings):
    """Every environment variable ai-worker reads. Field ``foo_bar`` is ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- OpenAI (or any OpenAI-compatible server) -----------------------------------
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_timeout: float = Field(
        60.0, gt=0, description="seconds one HTTP call may take in all, connect to last byte"
    )
    openai_max_retries: int = Field(3, ge=0, le=20)
    openai_default_model: str = "gpt-4o-mini"

    # --- Codegen agent API ----------------------------------------------------------
    codegen_org_id: int | None = None
    codegen_token: SecretStr | None = None
    codegen_base_url: str = "https://api.codegen.com"
    codegen_timeout: float = Field(
        30.0, gt=0, description="seconds one HTTP call may take in all, connect to last byte"
    )
    codegen_max_retries: int = Field(3, ge=0, le=20)
    codegen_poll_interval: float = Field(5.0, gt=0, description="seconds between polls")
    codegen_run_timeout: float = Field(
        3600.0, gt=0, description="seconds a blocking CodegenProvider call waits for a run"
    )

    # --- Codegen agent runs followed as jobs (app.jobs.agent_runs) --------------------
    # Codegen's limits, shared by every worker through token buckets in Redis
    # (app.core.budget): standard endpoints, then creations.
    codegen_rate_limit: int = Field(
        60, gt=1, description="requests allowed per CODEGEN_RATE_WINDOW (standard endpoints)"
    )
    codegen_rate_window: float = Field(30.0, gt=0, description="seconds")
    codegen_rate_burst: int = Field(
        10, gt=0, description="requests the budget lets through at once (below the limit)"
    )
    codegen_create_limit: int = Field(10, gt=1, description="run creations per window")
    codegen_create_window: float = Field(60.0, gt=0, description="seconds")
    codegen_create_burst: int = Field(5, gt=0, description="creations let through at once")
    codegen_rate_margin: float = Field(
        1.0, ge=0, description="seconds added to each window for request latency"
    )
    aiw_agent_poll_sweep_interval: float = Field(
        60.0,
        gt=0,
        description="seconds between two beat ticks of the poller: the safety net (stuck"
        " runs, lost messages); while runs are followed, rounds schedule themselves",
    )
    aiw_agent_poll_interval: float = Field(
        10.0, gt=0, description="seconds between two polls of one run, at first"
    )
    aiw_agent_poll_max_interval: float = Field(
        300.0, gt=0, description="ceiling of a run's poll interval, seconds"
    )
    aiw_agent_poll_growth: float = Field(
        1.5, ge=1.0, description="the interval is multiplied by this every"
        " AIW_AGENT_POLL_GROWTH_EVERY polls without a status change"
    )
    aiw_agent_poll_growth_every: int = Field(10, gt=0)
    aiw_agent_poll_batch: int = Field(
        2000, gt=0, le=100_000, description="due runs one poll round takes at most"
    )
    aiw_agent_poll_get_max: int = Field(
        3, ge=0, le=100, description="up to this many due runs are read one GET each; more"
        " are read from the list endpoint, 100 a page"
    )
    aiw_agent_run_deadline: float = Field(
        86_400.0, gt=0, description="a run not ended this long after it started is marked stuck"
    )
    aiw_agent_run_logs: bool = Field(
        True, description="store the logs of an ended run as an artifact (the logs endpoint)"
    )

    # --- Provider layer ------------------------------------------------------------
    prefer_codegen: bool = True
    ai_max_prompt_chars: int = Field(400_000, gt=0)
    aiw_max_answer_bytes: int = Field(
        8 * 1024 * 1024,
        gt=0,
        description="bytes of a provider's answer (OpenAI, Codegen) read at most; a larger"
        " answer fails with AnswerTooLargeError and nothing of it is kept",
    )
    retry_base_delay: float = Field(1.0, gt=0, description="first backoff step, seconds")
    retry_max_delay: float = Field(60.0, gt=0, description="cap of one backoff step, seconds")
    retry_after_max: float = Field(
        600.0, gt=0, description="cap on a server's Retry-After, seconds"
    )
    aiw_rate_limit_wait_max: float = Field(
        3600.0,
        gt=0,
        description="seconds a job may keep waiting out rate limits (429s, cooldowns) in"
        " all; only then does a 429 fail it (or hand it to the next provider)",
    )
    aiw_pricing_file: Path | None = None
    aiw_budget_answer_tokens: int = Field(
        1000,
        gt=0,
        le=1_000_000,
        description="answer tokens a spend budget reserves for a job without max_tokens",
    )
    # Admission (app.core.admission): calls reserve from windows shared by every worker.
    aiw_rate_limits: str = Field(
        "",
        description="requests and tokens per minute, e.g."
        " 'openai=500rpm,200000tpm;openai:gpt-4o-mini=60rpm,20000tpm'",
    )
    aiw_rate_learn: bool = Field(
        True, description="follow the x-ratelimit-* headers of the answers (learned limits)"
    )
    aiw_rate_window: float = Field(
        60.0, gt=0, description="seconds of the providers' 'minute' (tests shrink it)"
    )
    aiw_rate_burst: float = Field(
        0.1, gt=0, lt=1, description="share of a limit let through at once"
    )
    aiw_rate_margin: float = Field(
        1.0, ge=0, description="seconds added to each window for request latency"
    )

    # --- Jobs and workers -----------------------------------------------------------
    aiw_max_countdown: float = Field(
        300.0,
        gt=0,
        description="longest retry wait kept as a broker countdown; longer waits are"
        " parked in the database for the sweep",
    )
    aiw_task_soft_time_limit: float = Field(540.0, gt=0, description="seconds, per task")
    aiw_task_time_limit: float = Field(600.0, gt=0, description="seconds, per task (hard kill)")
    aiw_lease: float = Field(
        30.0,
        gt=0,
        description="seconds a worker owns a claimed row (job, webhook delivery, agent-run"
        " creation) past its last heartbeat; a dead worker's work is taken again after it",
    )
    aiw_tag_concurrency: str = Field(
        "",
        description="per-tag caps on the jobs running at once across all workers, e.g."
        " 'bulk=4,team-a=8'; a job over a cap waits (AIW_TAG_WAIT) without an attempt",
    )
    aiw_tag_wait: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds a job held back by its tag's cap waits before it is tried"
        " again (plus up to as much at random)",
    )
    aiw_heartbeat_interval: float = Field(
        10.0, gt=0, description="seconds between two renewals of a worker's leases"
    )
    aiw_shutdown_grace: float = Field(
        20.0,
        ge=0,
        description="seconds a stopping worker gives its running calls to finish before it"
        " hands their jobs back to the others",
    )
    aiw_republish_after: float = Field(
        300.0, gt=0, description="a queued/waiting job untouched this long is published again"
    )
    aiw_sweep_interval: float = Field(15.0, gt=0, description="seconds between sweeps (beat)")
    aiw_visibility_timeout: float = Field(
        3600.0, gt=0, description="Redis visibility timeout; must exceed AIW_MAX_COUNTDOWN"
    )
    aiw_task_events: bool = Field(
        False,
        description="send Celery task events from the start (Flower turns them on anyway"
        " in every worker it watches)",
    )
    aiw_worker_pool: Literal["threads", "prefork", "solo", "gevent", "eventlet"] = "threads"
    aiw_worker_concurrency: int = Field(
        32, gt=0, le=2000, description="threads of an AI-request worker process"
    )
    aiw_webhook_concurrency: int = Field(
        16, gt=0, le=2000, description="threads of a webhook-delivery worker process"
    )
    aiw_agent_run_concurrency: int = Field(
        4, gt=0, le=2000, description="threads of an agent-run (Codegen) worker process"
    )
    aiw_maintenance_concurrency: int = Field(
        2, gt=0, le=100, description="threads of the maintenance (sweep) worker process"
    )
    aiw_imports: str = Field(
        "", description="comma-separated modules the worker imports (your callback tasks)"
    )

    # --- Webhooks -------------------------------------------------------------------
    aiw_secret_key: SecretStr | None = Field(
        None,
        description="Fernet key(s) encrypting stored secrets, comma-separated to rotate (the"
        " first encrypts); unset: one is generated into AIW_DATA_DIR/secret.key",
    )
    aiw_webhook_allow_private: bool = Field(
        False, description="allow webhook URLs on loopback, private and link-local addresses"
    )
    aiw_webhook_retry_schedule: str = Field(
        "5,300,1800,7200,18000,36000",
        description="seconds to wait before each retry of a failed delivery, comma-separated",
    )
    aiw_webhook_disable_after: float = Field(
        432_000.0, gt=0, description="an endpoint failing without a break this long is disabled"
    )
    aiw_webhook_timeout: float = Field(10.0, gt=0, description="seconds per delivery request")

    # --- Infrastructure ------------------------------------------------------------
    database_url: str | None = None
    celery_broker_url: str | None = None
    redis_url: str | None = None
    # A server that accepts the connection and then says nothing (a partition behind a
    # middlebox, a stopped VM) must not hang a submit or a command: these bound it.
    aiw_connect_timeout: float = Field(
        5.0, ge=1, le=300, description="seconds to connect to PostgreSQL or Redis"
    )
    aiw_read_timeout: float = Field(
        5.0,
        gt=1,
        le=300,
        description="seconds a Redis command (the broker's too) may wait for its answer;"
        " PostgreSQL's TCP timeout for unanswered packets",
    )
    aiw_statement_timeout: float = Field(
        60.0, ge=0, le=86_400, description="PostgreSQL statement_timeout (0: none)"
    )
    flower_basic_auth: SecretStr | None = None
    aiw_data_dir: Path = DEFAULT_DATA_DIR

    # --- Dashboards and metrics (aiw up / aiw flower / aiw metrics) -------------------
    aiw_flower_address: str = Field("127.0.0.1", min_length=1)
    aiw_flower_port: int = Field(5555, ge=1, le=65535)
    aiw_metrics_address: str = Field("127.0.0.1", min_length=1)
    aiw_metrics_port: int = Field(9808, ge=1, le=65535)
    aiw_metrics_cache: float = Field(
        5.0, ge=0, description="seconds a database snapshot serves scrapes before it is read again"
    )

    # --- Logging -------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    enable_ai_logging: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("openai_api_key", "codegen_token", "flower_basic_auth", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("openai_base_url", "codegen_base_url")
    @classmethod
    def _no_credentials_in_urls(cls, value: str | None) -> str | None:
        # HTTP clients log request URLs: a user:password part would end up in logs.
        if value and "@" in (urlsplit(value).netloc or ""):
            raise ValueError("must not contain credentials (user:password@); use the token setting")
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for pair in value.get_secret_value().split(","):
                user, sep, password = pair.strip().partition(":")
                if not (sep and user and password):
                    raise ValueError("must be user:password (several separated by commas)")
        return value

    @field_validator("codegen_org_id", "openai_base_url", "aiw_pricing_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("aiw_secret_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("aiw_tag_concurrency")
    @classmethod
    def _tag_caps(cls, value: str) -> str:
        parse_tag_caps(value)
        return value

    @field_validator("aiw_rate_limits")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @field_validator("aiw_webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    # Convenience -------------------------------------------------------------------
    @property
    def has_openai(self) -> bool:
        return self.openai_api_key is not None

    @property
    def has_codegen(self) -> bool:
        return self.codegen_token is not None and self.codegen_org_id is not None

    @property
    def tag_caps(self) -> dict[str, int]:
        """Tag -> most jobs with it running at once (``AIW_TAG_CONCURRENCY``)."""
        return parse_tag_caps(self.aiw_tag_concurrency)

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        """Seconds before each retry of a failed delivery (``AIW_WEBHOOK_RETRY_SCHEDULE``)."""
        return parse_schedule(self.aiw_webhook_retry_schedule)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.aiw_task_soft_time_limit >= self.aiw_task_time_limit:
            raise ValueError("AIW_TASK_SOFT_TIME_LIMIT must be below AIW_TASK_TIME_LIMIT")
        if self.aiw_visibility_timeout <= self.aiw_max_countdown:
            raise ValueError("AIW_VISIBILITY_TIMEOUT must exceed AIW_MAX_COUNTDOWN")
        if self.aiw_heartbeat_interval * 2 > self.aiw_lease:
            raise ValueError(
                "AIW_HEARTBEAT_INTERVAL must be at most half of AIW_LEASE (a lease is renewed"
                " at least twice before it runs out)"
            )
        return self

    @model_validator(mode="after")
    def _codegen_budget(self) -> Settings:
        if self.codegen_rate_burst >= self.codegen_rate_limit:
            raise ValueError("CODEGEN_RATE_BURST must be below CODEGEN_RATE_LIMIT")
        if self.codegen_create_burst >= self.codegen_create_limit:
            raise ValueError("CODEGEN_CREATE_BURST must be below CODEGEN_CREATE_LIMIT")
        if self.aiw_agent_poll_max_interval < self.aiw_agent_poll_interval:
            raise ValueError("AIW_AGENT_POLL_MAX_INTERVAL must be at least AIW_AGENT_POLL_INTERVAL")
        return self


# Never echoed in an error: secrets, and URLs (they may carry a password).
_SECRET_FIELDS = {
    "openai_api_key",
    "codegen_token",
    "flower_basic_auth",
    "aiw_secret_key",
    "openai_base_url",
    "codegen_base_url",
    "database_url",
    "celery_broker_url",
    "redis_url",
}


def parse_schedule(value: str) -> tuple[float, ...]:
    """``"5,300,1800"`` -> ``(5.0, 300.0, 1800.0)``; blank means no retries."""
    steps = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            step = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number of seconds") from None
        if not 0 <= step < float("inf"):
            raise ValueError(f"{part.strip()!r}: each wait must be a finite number >= 0")
        steps.append(step)
    return tuple(steps)


def parse_tag_caps(value: str) -> dict[str, int]:
    """``"bulk=4,team-a=8"`` -> ``{"bulk": 4, "team-a": 8}``; blank means no caps."""
    caps: dict[str, int] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        tag, sep, number = part.partition("=")
        tag = tag.strip()
        if not sep or not tag or len(tag) > 100:
            raise ValueError(f"{part.strip()!r} is not TAG=N (a tag of 1..100 chars)")
        try:
            cap = int(number)
        except ValueError:
            raise ValueError(f"{part.strip()!r}: the cap must be a whole number") from None
        if cap < 1:
            raise ValueError(f"{part.strip()!r}: the cap must be at least 1")
        if tag in caps:
            raise ValueError(f"tag {tag!r} is capped twice")
        caps[tag] = cap
    return caps


#: Providers whose calls are admitted by AIW_RATE_LIMITS (Codegen: CODEGEN_RATE_*).
RATE_LIMITED_PROVIDERS = ("openai",)
_RATE_UNITS = {"rpm": 0, "tpm": 1}


def parse_rate_limits(value: str) -> dict[str, tuple[int | None, int | None]]:
    """``"openai=500rpm,200000tpm;openai:gpt-4o=60rpm"`` -> ``{"openai": (500, 200000),
    "openai:gpt-4o": (60, None)}``: requests and tokens per minute of a provider (the
    default of each of its models) or of one model."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for entry in value.split(";"):
        if not entry.strip():
            continue
        name, sep, spec = (part.strip() for part in entry.partition("="))
        provider, _, model = name.partition(":")
        if not sep or not spec:
            raise ValueError(f"{entry.strip()!r}: write <provider>[:<model>]=<n>rpm,<n>tpm")
        if provider not in RATE_LIMITED_PROVIDERS:
            raise ValueError(
                f"{entry.strip()!r}: unknown provider {provider!r} (known: "
                f"{', '.join(RATE_LIMITED_PROVIDERS)}; Codegen's are CODEGEN_RATE_*)"
            )
        if ":" in name and not model:
            raise ValueError(f"{entry.strip()!r}: empty model name after ':'")
        if name in limits:
            raise ValueError(f"{name!r} is given twice")
        pair: list[int | None] = [None, None]
        for item in spec.split(","):
            item = item.strip().lower()
            unit = item[-3:]
            if unit not in _RATE_UNITS or not item[:-3].strip().isdigit():
                raise ValueError(f"{entry.strip()!r}: {item!r} is not <n>rpm or <n>tpm")
            if pair[_RATE_UNITS[unit]] is not None:
                raise ValueError(f"{entry.strip()!r}: {unit} is given twice")
            number = int(item[:-3])
            if number < 1:
                raise ValueError(f"{entry.strip()!r}: {item!r} must be at least 1")
            pair[_RATE_UNITS[unit]] = number
        limits[name] = (pair[0], pair[1])
    return limits


def load_settings(**overrides: object) -> Settings:
    """Parse the environment; raise ``ConfigError`` naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across several variables names them itself
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            shown = "" if field in _SECRET_FIELDS else f" (got {err.get('input')!r})"
            problems.append(f"{field.upper()}: {err['msg']}{shown}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed once. ``get_settings.cache_clear()`` re-reads."""
    return load_settings()
