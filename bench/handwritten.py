"""The hand-written baseline: what a user would write instead of ai-worker.

A plain Celery app of its own (JSON, acks_late, prefetch 1, threads pool, no result
backend) with one task that asks an OpenAI-compatible server through the official
``openai`` SDK (one client per process, made on first use, no SDK retries unless
``HANDWRITTEN_SDK_RETRIES`` says how many: 2 is the SDK's default, which waits out a
429's ``retry-after-ms``/``retry-after`` in the calling thread) and stores
the answer with one INSERT into a table of its own, ``handwritten_answers``, through a
small SQLAlchemy Core engine. No job row before the call, no claim, no attempt or usage
rows, no retry policy, no fallback, no events: the least a user gets away with.

It reads what ai-worker reads from the environment: ``CELERY_BROKER_URL``,
``DATABASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` (and ``OPENAI_TIMEOUT``).
It imports nothing of ai-worker. The worker::

    celery -A bench.handwritten worker --pool threads --concurrency 32 -Q handwritten

The producer: ``create_app(broker_url).send_task(TASK, args=["a prompt"])``.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

from celery import Celery
from openai import OpenAI
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    create_engine,
    func,
    insert,
    select,
)

TASK = "handwritten.answer"
QUEUE = "handwritten"
MODEL = "gpt-4o-mini"

metadata = MetaData()
answers = Table(
    "handwritten_answers",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("content", Text, nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_app(broker_url: str) -> Celery:
    app = Celery("handwritten")
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        task_default_queue=QUEUE,
    )
    return app


app = create_app(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))

# The SDK's HTTP client logs a line per request at INFO; quiet it, as ai-worker's
# worker does, so both log the same (Celery's received/succeeded lines per task).
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_lock = threading.Lock()
_client: OpenAI | None = None
_engine: Engine | None = None


def client() -> OpenAI:
    global _client
    with _lock:
        if _client is None:
            _client = OpenAI(
                api_key=os.environ["OPENAI_API_KEY"],
                base_url=os.environ.get("OPENAI_BASE_URL"),
                timeout=float(os.environ.get("OPENAI_TIMEOUT", "60")),
                max_retries=int(os.environ.get("HANDWRITTEN_SDK_RETRIES", "0")),
            )
        return _client


def engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = create_engine(os.environ["DATABASE_URL"], pool_size=10, max_overflow=10)
        return _engine


@app.task(name=TASK)
def answer(prompt: str) -> None:
    response = client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}]
    )
    usage = response.usage
    with engine().begin() as conn:
        conn.execute(
            insert(answers).values(
                id=uuid.uuid4(),
                content=response.choices[0].message.content or "",
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
            )
        )


# For the benchmark (not part of what a user would write) -----------------------------


def create_table(db: Engine) -> None:
    metadata.create_all(db)


def count_answers(db: Engine) -> int:
    with db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(answers)) or 0
