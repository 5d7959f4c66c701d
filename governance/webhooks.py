"""Webhooks: downstream systems (CDN, PIM, marketplaces) learn when an image is published, reviewed or
withdrawn.

With `ATELIER_WEBHOOK_URL` set, each of those changes writes a delivery row in its own transaction
(an outbox: the event exists exactly when the change does). `deliver` then POSTs each due delivery as
JSON with

    X-Atelier-Event: image.withdrawn
    X-Atelier-Delivery: <delivery id>          (the receiver's idempotency key: retries repeat it)
    X-Atelier-Timestamp: <unix seconds>
    X-Atelier-Signature: sha256=<HMAC-SHA256 of "<timestamp>.<body>" under the webhook secret>

A 2xx answer marks it delivered; anything else (or no answer) is retried with exponential backoff
(2, 4, 8 ... seconds, at most 10 minutes apart) up to `max_attempts`, then marked failed with the last
error. Every face delivers after the acts that enqueue (runs, review decisions, withdrawals);
`atelier webhooks deliver` retries what is due, and `atelier webhooks list` shows the state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from governance.records import WebhookDelivery, utcnow
from governance.results import Result

ENABLED = "atelier.webhooks"  # session.info flag: a webhook URL is configured (set by the Runtime)
EVENTS = ("image.published", "image.reviewed", "image.withdrawn")


def enqueue(session: Session, event: str, subject_id: str, payload: dict[str, Any]) -> None:
    """Record an event for delivery, in the caller's transaction; nothing when no webhook is configured."""
    if not session.info.get(ENABLED):
        return
    assert event in EVENTS, event
    body = {"event": event, "image_id": subject_id, "at": utcnow().isoformat(), **payload}
    session.add(WebhookDelivery(event=event, subject_id=subject_id, payload=body))


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryInfo(Result):
    delivery_id: str
    event: str
    image_id: str
    status: str
    attempts: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


def listing(session: Session, status: str | None = None, limit: int = 200) -> list[DeliveryInfo]:
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(WebhookDelivery.status == status)
    return [
        DeliveryInfo(d.id, d.event, d.subject_id, d.status, d.attempts, d.last_error, d.created_at, d.delivered_at)
        for d in session.scalars(stmt)
    ]


def _post(url: str, secret: bytes, delivery: WebhookDelivery, timeout: float) -> str | None:
    """One attempt; None when the receiver took it (2xx), else what went wrong (one line)."""
    import httpx

    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "atelier-webhooks/1",
        "X-Atelier-Event": delivery.event,
        "X-Atelier-Delivery": delivery.id,
        "X-Atelier-Timestamp": stamp,
        "X-Atelier-Signature": signature(secret, stamp, body),
    }
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(600, 2**attempts))


@dataclass(frozen=True)
class DeliveryRound(Result):
    delivered: int
    retrying: int
    failed: int


def deliver(
    sessions: sessionmaker[Session],
    url: str,
    secret: bytes,
    *,
    max_attempts: int = 8,
    timeout: float = 5.0,
    wait_up_to: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryRound:
    """Send every due delivery once; with `wait_up_to` seconds, keep retrying those that failed as they
    come due again (backoff) until they are delivered, give up, or the time is spent."""
    deadline = time.monotonic() + wait_up_to
    delivered = failed = 0
    while True:
        with sessions.begin() as session:
            due = list(
                session.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())
                    .order_by(WebhookDelivery.created_at)
                    .limit(500)
                    .with_for_update(skip_locked=True)
                )
            )
            for d in due:
                error = _post(url, secret, d, timeout)
                d.attempts += 1
                if error is None:
                    d.status, d.delivered_at, d.last_error = "delivered", utcnow(), ""
                    delivered += 1
                else:
                    d.last_error = error
                    if d.attempts >= max_attempts:
                        d.status = "failed"
                        failed += 1
                    else:
                        d.next_attempt_at = utcnow() + backoff(d.attempts)
        with sessions() as session:
            pending = list(
                session.scalars(select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.status == "pending"))
            )
        if not pending:
            return DeliveryRound(delivered, 0, failed)
        wait = (min(pending) - utcnow()).total_seconds()
        if time.monotonic() + max(wait, 0) > deadline:
            return DeliveryRound(delivered, len(pending), failed)
        sleep(max(wait, 0.05))
