"""What the broker says waits in a queue, on real Redis and real RabbitMQ, and the
sweeps' empty-queue rule that rests on it.

An empty queue on Redis is no key at all, and kombu's passive declare then refuses
with NOT_FOUND. Read as "unknown", that kept the rule from ever firing on Redis: a
delivery whose publisher died between its commit and its publish waited
``AIW_REPUBLISH_AFTER`` (300 s) instead of ``QUIET`` (5 s).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.config import get_settings
from app.core.publisher import (
    QUEUE_AI,
    QUEUE_WEBHOOKS,
    PublishError,
    get_publisher,
    queue_is_empty,
    set_publisher,
)
from app.db.base import utcnow
from app.db.claims import QUIET
from app.db.session import session_scope
from app.db.webhook_models import WebhookDeliveryRow
from app.webhooks import register_endpoint
from app.webhooks.events import emit
from app.webhooks.sweep import sweep_deliveries
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration


def test_an_empty_redis_queue_is_zero_and_waiting_messages_are_counted(
    webhook_bed: QueueBed,
) -> None:
    publisher = get_publisher()
    assert webhook_bed.redis.exists("webhooks") == 0  # no key: kombu says NOT_FOUND
    assert publisher.queue_depth(QUEUE_WEBHOOKS) == 0
    assert queue_is_empty(QUEUE_WEBHOOKS) and queue_is_empty(QUEUE_AI)
    for _ in range(3):
        publisher.publish_delivery(str(uuid.uuid4()))
    publisher.publish_job(str(uuid.uuid4()), priority="low")  # a priority step's own list
    publisher.publish_job(str(uuid.uuid4()), priority="high")
    assert publisher.queue_depth(QUEUE_WEBHOOKS) == 3
    assert publisher.queue_depth(QUEUE_AI) == 2
    assert not queue_is_empty(QUEUE_WEBHOOKS) and not queue_is_empty(QUEUE_AI)


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of its own on the machine's RabbitMQ, removed afterwards."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed")
    vhost = f"aiw-test-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    yield vhost
    subprocess.run([ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=60)


def test_rabbitmq_answers_the_same(rabbitmq_vhost: str) -> None:
    from workers.celery_app import create_celery_app
    from workers.publisher import CeleryPublisher

    settings = get_settings().model_copy(
        update={"celery_broker_url": f"amqp://guest:guest@127.0.0.1:5672/{rabbitmq_vhost}"}
    )
    app = create_celery_app(settings)
    try:
        publisher = CeleryPublisher(app)
        assert publisher.queue_depth(QUEUE_WEBHOOKS) == 0  # never declared: 404, nothing waits
        publisher.ensure_routes()
        assert publisher.queue_depth(QUEUE_WEBHOOKS) == 0
        for _ in range(2):
            publisher.publish_delivery(str(uuid.uuid4()))
        assert publisher.queue_depth(QUEUE_WEBHOOKS) == 2
        publisher.close()
    finally:
        app.close()


class _DiesBeforePublishing:
    """A publisher that never gets a message out: its process died after the commit."""

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        raise PublishError("killed before the message left")


def test_the_sweep_sends_a_delivery_whose_publisher_died_once_quiet_has_passed(
    webhook_bed: QueueBed,
) -> None:
    register_endpoint("http://127.0.0.1:9/hook", ["ai_request.succeeded"])
    real = get_publisher()
    set_publisher(_DiesBeforePublishing())  # type: ignore[arg-type]
    try:
        with session_scope() as s:
            (delivery_id,) = emit(s, "ai_request.succeeded", {"id": "x"})
    finally:
        set_publisher(real)
    assert real.queue_depth(QUEUE_WEBHOOKS) == 0
    assert sweep_deliveries() == 0  # published moments ago: its message may still be coming

    with session_scope() as s:  # QUIET seconds later, and still nothing in the queue
        s.execute(
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id)
            .values(published_at=utcnow() - timedelta(seconds=QUIET + 1))
        )
    assert sweep_deliveries() == 1
    assert real.queue_depth(QUEUE_WEBHOOKS) == 1
    assert sweep_deliveries() == 0  # stamped again: once per loss
