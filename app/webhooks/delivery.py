"""Sending one delivery: what the ``aiw.webhook.deliver`` task calls, and all it does.

Like a job run (``app.jobs.runner``), a try is three short steps on the one claim
machine (``app.db.claims``), and no database connection is held during the HTTP
request:

1. **Claim** the delivery with one conditional UPDATE: only a ``pending``
   delivery that is due and not leased by another worker can be claimed (a
   manual redelivery may claim one in any status). A message for a delivery
   that already succeeded claims nothing: it is never sent again.
2. **Send** it: the body of its event, signed for this try, POSTed through the
   URL guard (the address connected to is checked), redirects not followed. The
   heartbeat renews the claim's short lease meanwhile; a worker that dies gives the
   delivery back when it runs out.
3. **Record**, durably (a database outage is waited out, so a 2xx is never sent
   twice because PostgreSQL restarted), one attempt row, and the delivery's next
   state: a 2xx marks it
   succeeded (whoever holds the claim by then: the receiver has the event); a
   failure, fenced by the claim token, schedules a retry after a countdown,
   parks a long wait for the sweep, or fails it; it also extends the endpoint's
   failing stretch, which disables the endpoint on 410 or after
   ``AIW_WEBHOOK_DISABLE_AFTER`` seconds.

On PostgreSQL the claim and the success are one statement each, prebuilt, on an
autocommit connection (``_unit``); SQLite, which cannot return joined rows from an
UPDATE, takes two statements in a transaction.

``send`` is the one place that catches every exception: whatever goes wrong
while sending becomes a failed attempt with its reason, never a lost delivery. That
reason (an attempt's ``error``, the delivery's ``last_error``) and the response
snippet kept are redacted (``app.core.redact``) before they are stored.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests
from sqlalchemy import Integer, String, Uuid, bindparam, cast, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from urllib3.exceptions import MaxRetryError

from app.config import get_settings
from app.core.redact import redact
from app.db.base import UTCDateTime, utcnow
from app.db.claims import Outcome, claimable, lease_until, record_durably
from app.db.heartbeat import hold
from app.db.session import database_url, get_hot_engine, session_scope
from app.db.webhook_models import (
    DeliveryStatus,
    WebhookAttemptRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WebhookEventRow,
)
from app.webhooks.crypto import get_secret_box
from app.webhooks.errors import (
    DeliveryBusyError,
    DeliveryNotFoundError,
    SecretKeyError,
    UnsafeTargetError,
)
from app.webhooks.policy import is_gone, is_success, retry_delay, should_disable
from app.webhooks.signing import event_body, sign_headers
from app.webhooks.urlguard import guarded_session

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

SNIPPET_BYTES = 1024  # of the response body kept per attempt
ERROR_CHARS = 2000


@dataclass(frozen=True)
class SendResult:
    """One HTTP try: the answer's status (None if there was none) or what went wrong."""

    status_code: int | None
    latency_s: float
    error: str | None
    snippet: str | None
    started_at: datetime

    @property
    def ok(self) -> bool:
        return is_success(self.status_code)


@dataclass(frozen=True)
class _Claim:
    delivery_id: uuid.UUID
    token: str
    number: int  # this attempt's number within the delivery
    manual: bool
    event_id: str
    event_type: str
    payload: dict[str, Any]
    event_created_at: datetime
    endpoint_id: uuid.UUID
    url: str
    secret_encrypted: str
    failing_since: datetime | None


# --- HTTP sessions: one per process and policy, shared by its threads ----------------

_sessions: dict[tuple[int, bool], requests.Session] = {}
_sessions_lock = threading.Lock()


def _http(settings: Settings) -> requests.Session:
    key = (os.getpid(), settings.aiw_webhook_allow_private)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = guarded_session(
                allow_private=settings.aiw_webhook_allow_private,
                pool_maxsize=max(10, settings.aiw_worker_concurrency),
            )
        return session


def reset_resources() -> None:
    """Close this module's pooled HTTP connections (tests, shutdown); the database
    engines are ``app.db.session.dispose_engines``'s."""
    with _sessions_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()


# --- the automatic path (the task) ---------------------------------------------------


def deliver(
    delivery_id: str | uuid.UUID,
    *,
    claim_token: str | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """Try the delivery once if it is due. ``claim_token`` names this message (the
    Celery task id): the same message retried after a database error takes its own
    claim back at once instead of waiting for the lease to expire."""
    settings = settings or get_settings()
    try:
        did = delivery_id if isinstance(delivery_id, uuid.UUID) else uuid.UUID(str(delivery_id))
    except ValueError:
        log.error("dropping a message with a malformed delivery id %r", delivery_id)
        return Outcome(str(delivery_id), "skipped", reason="malformed delivery id")
    claim = _claim(did, claim_token or str(uuid.uuid4()), settings, manual=False)
    if isinstance(claim, Outcome):
        return claim
    with hold(WebhookDeliveryRow, did, claim.token):
        result = send(claim, settings)
        return record_durably(
            lambda: _record(claim, result, settings), what=f"webhook delivery {did}"
        )


# --- the hot path's database access ----------------------------------------------------


@contextmanager
def _unit() -> Iterator[Session | Connection]:
    """Where a step of the hot path runs: one autocommit statement on PostgreSQL;
    a ``session_scope`` transaction elsewhere (SQLite: a step takes two statements)."""
    url = database_url()
    if url.startswith("postgresql"):
        with get_hot_engine(url).connect() as conn:
            yield conn
    else:
        with session_scope() as session:
            yield session


_WANTED = (
    WebhookEventRow.id,
    WebhookEventRow.type,
    WebhookEventRow.payload,
    WebhookEventRow.created_at,
    WebhookEndpointRow.id,
    WebhookEndpointRow.url,
    WebhookEndpointRow.secret_encrypted,
    WebhookEndpointRow.enabled,
    WebhookEndpointRow.failing_since,
    WebhookEndpointRow.disabled_reason,
)


@functools.cache
def _claim_statement(*, manual: bool, joined: bool) -> Any:
    """The claim, built once: a conditional UPDATE taking the lease. ``joined``: UPDATE ...
    FROM the event and endpoint RETURNING what the try needs (PostgreSQL); else RETURNING
    the attempt number only (SQLite cannot return the FROM tables)."""
    D, E, P = WebhookDeliveryRow, WebhookEventRow, WebhookEndpointRow
    now = bindparam("now", type_=UTCDateTime())
    token = bindparam("token", type_=String())
    conditions = [D.id == bindparam("did", type_=Uuid())]
    if manual:  # any status, due or not, unless another worker is sending it right now
        conditions.append(
            or_(D.claim_token.is_(None), D.lease_expires_at < now, D.claim_token == token)
        )
    else:
        conditions += [D.status == DeliveryStatus.PENDING.value, claimable(D, now, token)]
    statement = (
        update(D)
        .where(*conditions)
        .values(
            claim_token=token,
            lease_expires_at=bindparam("lease_until", type_=UTCDateTime()),
            attempt_count=D.attempt_count + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if joined:
        return statement.where(E.id == D.event_id, P.id == D.endpoint_id).returning(
            D.attempt_count, *_WANTED
        )
    return statement.returning(D.attempt_count)


def _claim(did: uuid.UUID, token: str, settings: Settings, *, manual: bool) -> _Claim | Outcome:
    now = utcnow()
    D, E, P = WebhookDeliveryRow, WebhookEventRow, WebhookEndpointRow
    params = {"did": did, "token": token, "now": now, "lease_until": lease_until(now, settings)}
    with _unit() as session:
        if isinstance(session, Connection):  # one statement
            row = session.execute(_claim_statement(manual=manual, joined=True), params).first()
            if row is None:
                return _not_claimed(session, did, now, manual=manual)
            number, *rest = row
            found = tuple(rest)
        else:
            claim = _claim_statement(manual=manual, joined=False)
            number = session.execute(claim, params).scalar_one_or_none()
            if number is None:
                return _not_claimed(session, did, now, manual=manual)
            found = tuple(
                session.execute(
                    select(*_WANTED)
                    .select_from(D)
                    .join(E, E.id == D.event_id)
                    .join(P, P.id == D.endpoint_id)
                    .where(D.id == did)
                ).one()
            )
        (event_id, event_type, payload, created_at, endpoint_id, url, secret, enabled,
         failing_since, disabled_reason) = found  # fmt: skip
        if not enabled and not manual:
            session.execute(
                update(D)
                .where(D.id == did)
                .values(
                    status=DeliveryStatus.ABANDONED,
                    claim_token=None,
                    lease_expires_at=None,
                    next_attempt_at=None,
                    attempt_count=D.attempt_count - 1,  # nothing was tried
                    last_error=f"endpoint disabled: {disabled_reason or 'by the operator'}",
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return Outcome(str(did), "done", DeliveryStatus.ABANDONED, reason="endpoint disabled")
        return _Claim(
            delivery_id=did,
            token=token,
            number=number,
            manual=manual,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            event_created_at=created_at,
            endpoint_id=endpoint_id,
            url=url,
            secret_encrypted=secret,
            failing_since=failing_since,
        )


def _not_claimed(
    session: Session | Connection, did: uuid.UUID, now: datetime, *, manual: bool
) -> Outcome:
    D = WebhookDeliveryRow
    row = session.execute(select(D.status, D.next_attempt_at).where(D.id == did)).first()
    if row is None:
        if manual:
            raise DeliveryNotFoundError(f"no webhook delivery {did}")
        log.warning("webhook delivery %s: no such delivery; message dropped", did)
        return Outcome(str(did), "skipped", reason="no such delivery")
    status, next_attempt_at = row
    if manual:
        raise DeliveryBusyError(f"delivery {did} is being sent right now; try again shortly")
    if status != DeliveryStatus.PENDING:
        return Outcome(str(did), "skipped", status, reason=f"already {status}")
    if next_attempt_at is None or next_attempt_at > now:
        # A duplicate message (the row has its own schedule and a message or the sweep
        # for it): dropping it keeps one message per delivery.
        return Outcome(str(did), "skipped", status, reason="not due")
    return Outcome(str(did), "skipped", status, reason="being sent by another worker")


# --- sending: the one boundary that catches everything ---------------------------------


def send(claim: _Claim, settings: Settings) -> SendResult:
    """POST the claimed delivery once. Never raises: a failure is a result."""
    started = utcnow()
    t0 = time.perf_counter()
    timeout = settings.aiw_webhook_timeout
    status_code: int | None = None
    snippet: str | None = None
    try:
        secret = get_secret_box(settings).decrypt(claim.secret_encrypted)
        body = event_body(claim.event_type, claim.payload, claim.event_created_at)
        headers = sign_headers(secret, claim.event_id, body)
        response = _http(settings).post(
            claim.url,
            data=body.encode("utf-8"),
            headers=headers,
            timeout=(min(timeout, 5.0), timeout),
            allow_redirects=False,
            stream=True,
        )
        try:
            status_code = response.status_code
            snippet = _read_snippet(response)
        finally:
            response.close()
        error = None if is_success(status_code) else _status_error(response)
    except (UnsafeTargetError, SecretKeyError) as exc:
        error = str(exc)
    except requests.Timeout:
        error = f"timed out (timeout {timeout:g} s)"
    except requests.ConnectionError as exc:
        error = f"connection failed: {_root_cause(exc)}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {_root_cause(exc)}"
    except Exception as exc:  # the one delivery boundary: record it, never lose a delivery
        log.exception("webhook delivery %s: unexpected error while sending", claim.delivery_id)
        error = f"internal error: {type(exc).__name__}: {exc}"
    return SendResult(
        status_code=status_code,
        latency_s=time.perf_counter() - t0,
        error=None if error is None else redact(error, settings)[:ERROR_CHARS],
        snippet=redact(snippet, settings),
        started_at=started,
    )


def _read_snippet(response: requests.Response) -> str | None:
    """The start of the body. A short body is read to its end, so the connection goes
    back to the pool; a long one is cut (and its connection closed)."""
    data = b""
    for chunk in response.iter_content(chunk_size=SNIPPET_BYTES):
        data += chunk
        if len(data) > SNIPPET_BYTES:
            break
    if not data:
        return None
    return data[:SNIPPET_BYTES].decode("utf-8", "replace")


def _status_error(response: requests.Response) -> str:
    if 300 <= response.status_code < 400:
        location = response.headers.get("location", "?")
        return f"HTTP {response.status_code}: redirect to {location[:300]} not followed"
    reason = f" {response.reason}" if response.reason else ""
    return f"HTTP {response.status_code}{reason}"


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the URL they print."""
    seen: set[int] = set()
    current: BaseException | None = exc
    best: BaseException = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        best = current
        if isinstance(current, MaxRetryError) and current.reason is not None:
            current = current.reason
            continue
        if current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
            continue
        current = current.__cause__ or current.__context__
    if isinstance(best, OSError) and best.strerror:
        return best.strerror
    return f"{type(best).__name__}: {best}"[:500]


# --- recording ---------------------------------------------------------------------------


def _attempt_values(claim: _Claim, result: SendResult) -> dict[str, Any]:
    return {
        "delivery_id": claim.delivery_id,
        "number": claim.number,
        "manual": claim.manual,
        "status_code": result.status_code,
        "latency_s": result.latency_s,
        "error": result.error,
        "response_snippet": result.snippet,
        "created_at": result.started_at,
    }


def _record(claim: _Claim, result: SendResult, settings: Settings) -> Outcome:
    if result.ok:
        return _record_success(claim, result)
    return _record_failure(claim, result, settings)


_ATTEMPT_COLUMNS = (
    "number", "manual", "status_code", "latency_s", "error", "response_snippet", "created_at",
)  # fmt: skip


@functools.cache
def _success_statement(*, with_attempt: bool) -> Any:
    """The success, built once. ``with_attempt`` (PostgreSQL): one statement,
    ``WITH updated AS (UPDATE ... RETURNING id) INSERT INTO webhook_attempts SELECT ...``."""
    D, A = WebhookDeliveryRow, WebhookAttemptRow
    now = bindparam("now", type_=UTCDateTime())
    succeed = (
        update(D)
        .where(D.id == bindparam("did", type_=Uuid()))
        .values(
            status=DeliveryStatus.SUCCEEDED.value,
            next_attempt_at=None,
            delivered_at=func.coalesce(D.delivered_at, now),
            last_status_code=bindparam("a_status_code", type_=Integer()),
            last_error=None,
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .returning(D.id)
        .execution_options(synchronize_session=False)
    )
    if not with_attempt:
        return succeed
    updated = succeed.cte("updated")
    table = A.__table__.c
    values = [
        cast(bindparam(f"a_{c}", type_=table[c].type), table[c].type) for c in _ATTEMPT_COLUMNS
    ]
    return (
        insert(A)
        .from_select(["delivery_id", *_ATTEMPT_COLUMNS], select(updated.c.id, *values))
        .returning(A.delivery_id)
    )


def _record_success(claim: _Claim, result: SendResult) -> Outcome:
    """The common case, in one statement on PostgreSQL (two on SQLite). A 2xx is a 2xx:
    the receiver has the event whoever holds the claim now, so the delivery is succeeded
    unconditionally (a later try of another worker records its attempt, nothing more)."""
    did = str(claim.delivery_id)
    attempt = _attempt_values(claim, result)
    params = {"did": claim.delivery_id, "now": utcnow()}
    params.update({f"a_{c}": attempt[c] for c in _ATTEMPT_COLUMNS})
    with _unit() as session:
        if isinstance(session, Connection):
            recorded = session.execute(_success_statement(with_attempt=True), params).first()
        else:
            recorded = session.execute(_success_statement(with_attempt=False), params).first()
            if recorded is not None:
                session.execute(insert(WebhookAttemptRow).values(**attempt))
        if recorded is None:  # deleted meanwhile (its endpoint or event was removed)
            return Outcome(did, "skipped", reason="deleted meanwhile")
        if claim.failing_since is not None:
            session.execute(
                update(WebhookEndpointRow)
                .where(
                    WebhookEndpointRow.id == claim.endpoint_id,
                    WebhookEndpointRow.failing_since.is_not(None),
                )
                .values(failing_since=None)
                .execution_options(synchronize_session=False)
            )
    return Outcome(did, "done", DeliveryStatus.SUCCEEDED, status_code=result.status_code)


def _record_failure(claim: _Claim, result: SendResult, settings: Settings) -> Outcome:
    now = utcnow()
    did = str(claim.delivery_id)
    with session_scope() as session:
        row = session.get(WebhookDeliveryRow, claim.delivery_id, with_for_update=True)
        if row is None:  # deleted meanwhile (its endpoint or event was removed)
            return Outcome(did, "skipped", reason="deleted meanwhile")
        session.add(WebhookAttemptRow(**_attempt_values(claim, result)))
        ours = row.claim_token == claim.token
        if ours:
            row.claim_token = None
            row.lease_expires_at = None
        row.last_status_code = result.status_code
        row.last_error = result.error
        row.updated_at = now

        disabled = _endpoint_failed(session, claim, now, settings, gone=is_gone(result.status_code))
        reason = result.error or "failed"
        if not ours:  # another worker owns it now: its try decides
            return Outcome(
                did, "skipped", row.status, status_code=result.status_code, reason=reason
            )
        if claim.manual:  # one try by hand: the automatic schedule, if any, goes on
            if row.status == DeliveryStatus.PENDING and row.next_attempt_at is None:
                row.status = DeliveryStatus.FAILED  # nothing scheduled (a test event)
            return Outcome(did, "done", row.status, status_code=result.status_code, reason=reason)
        if row.status != DeliveryStatus.PENDING:  # it ended meanwhile (endpoint disabled)
            return Outcome(did, "done", row.status, status_code=result.status_code, reason=reason)
        if is_gone(result.status_code):
            row.status = DeliveryStatus.FAILED
            row.next_attempt_at = None
            return Outcome(did, "done", row.status, status_code=410, reason=reason)
        if disabled is not None:
            row.status = DeliveryStatus.ABANDONED
            row.next_attempt_at = None
            return Outcome(did, "done", row.status, status_code=result.status_code, reason=disabled)
        delay = retry_delay(row.attempt_count, settings.webhook_retry_schedule)
        if delay is None:
            row.status = DeliveryStatus.FAILED
            row.next_attempt_at = None
            return Outcome(
                did,
                "done",
                row.status,
                status_code=result.status_code,
                reason=f"{reason}; retries spent",
            )
        row.next_attempt_at = now + timedelta(seconds=delay)
        if delay <= settings.aiw_max_countdown:
            row.published_at = now  # the task publishes itself again with this countdown
            return Outcome(
                did,
                "retry",
                row.status,
                countdown=delay,
                status_code=result.status_code,
                reason=reason,
            )
        row.published_at = None  # no message waits for it: the sweep publishes when due
        return Outcome(did, "parked", row.status, status_code=result.status_code, reason=reason)


def _endpoint_failed(
    session: Session, claim: _Claim, now: datetime, settings: Settings, *, gone: bool
) -> str | None:
    """Note a failure on the endpoint; disable it on 410 or after the failing stretch.
    Returns the reason when it was disabled now."""
    P = WebhookEndpointRow
    if gone:
        reason = "the receiver answered 410 Gone"
        return reason if disable(session, claim.endpoint_id, reason, now) else None
    if claim.failing_since is None:
        session.execute(
            update(P)
            .where(P.id == claim.endpoint_id, P.failing_since.is_(None))
            .values(failing_since=now)
            .execution_options(synchronize_session=False)
        )
        return None
    if should_disable(claim.failing_since, now, settings.aiw_webhook_disable_after):
        reason = (
            f"failing without a success since {claim.failing_since.isoformat()} "
            f"(AIW_WEBHOOK_DISABLE_AFTER={settings.aiw_webhook_disable_after:g} s)"
        )
        return reason if disable(session, claim.endpoint_id, reason, now) else None
    return None


def disable(session: Session, endpoint_id: uuid.UUID, reason: str, now: datetime) -> bool:
    """Disable an enabled endpoint and abandon its pending deliveries (in ``session``'s
    transaction). False if it was not enabled."""
    P, D = WebhookEndpointRow, WebhookDeliveryRow
    changed = session.execute(
        update(P)
        .where(P.id == endpoint_id, P.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(changed, "rowcount", 0):
        return False
    session.execute(
        update(D)
        .where(D.endpoint_id == endpoint_id, D.status == DeliveryStatus.PENDING)
        .values(
            status=DeliveryStatus.ABANDONED,
            next_attempt_at=None,
            last_error=f"endpoint disabled: {reason}",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)
    return True


# --- the manual path -------------------------------------------------------------------


@dataclass(frozen=True)
class ManualResult:
    delivery_id: uuid.UUID
    number: int
    result: SendResult
    outcome: Outcome


def send_now(delivery_id: uuid.UUID, settings: Settings | None = None) -> ManualResult:
    """Send a delivery once, now, whatever its status (same ``webhook-id``); the
    automatic schedule of a pending delivery is left as it was."""
    settings = settings or get_settings()
    claim = _claim(delivery_id, f"manual-{uuid.uuid4()}", settings, manual=True)
    assert isinstance(claim, _Claim)  # the manual claim raises instead of skipping
    with hold(WebhookDeliveryRow, delivery_id, claim.token):
        result = send(claim, settings)
        outcome = record_durably(
            lambda: _record(claim, result, settings), what=f"webhook delivery {delivery_id}"
        )
    return ManualResult(delivery_id, claim.number, result, outcome)
