"""The audit ledger: append-only and hash-chained.

Each event stores `hash = sha256(prev_hash + canonical_json(event))`, where the canonical JSON
covers seq, at, actor, action, subject and payload. `seq` is assigned as head + 1 by the writer,
so two writers that read the same head collide on the primary key instead of forking the chain;
on PostgreSQL a transaction-scoped advisory lock also serialises appenders.

`record_event` is called by every service function inside the caller's transaction
(invariant 3): the state change and its event commit or roll back together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from governance.records import AuditEvent

GENESIS_HASH = "0" * 64
_PG_LOCK_KEY = 0x41544C52  # "ATLR"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def _body(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "payload": event.payload,
    }


def record_event(
    session: Session,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    event = AuditEvent(
        seq=seq,
        at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        # Round-trip through JSON so what is hashed is exactly what the database returns later.
        payload=json.loads(canonical_json(payload or {})),
        prev_hash=prev,
    )
    event.hash = event_hash(prev, _body(event))
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


def verify_chain(session: Session, batch_size: int = 5000) -> ChainReport:
    """Recompute the chain from the first event; report the first event that does not fit."""
    expected_seq, prev, count = 1, GENESIS_HASH, 0
    stmt = select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=batch_size)
    for event in session.scalars(stmt):
        count += 1
        if event.seq != expected_seq:
            problem = (
                f"event {expected_seq} is missing (next stored event is {event.seq}): "
                "an event was deleted or renumbered"
            )
            return ChainReport(False, count, expected_seq - 1, prev, expected_seq, problem)
        if event.prev_hash != prev:
            problem = (
                f"event {event.seq} ({event.action}) does not link to event {event.seq - 1}: "
                "events were deleted, inserted or reordered"
            )
            return ChainReport(False, count, event.seq - 1, prev, event.seq, problem)
        if event_hash(prev, _body(event)) != event.hash:
            problem = f"event {event.seq} ({event.action}) was altered: its content no longer matches its hash"
            return ChainReport(False, count, event.seq - 1, prev, event.seq, problem)
        prev, expected_seq = event.hash, expected_seq + 1
    return ChainReport(True, count, expected_seq - 1, prev)


def events_for(session: Session, subject_ids: list[str]) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.subject_id.in_(subject_ids)).order_by(AuditEvent.seq)
    return list(session.scalars(stmt))
