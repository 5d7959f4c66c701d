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
    head = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
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


def _q(value: str) -> str:
    """json.dumps(value, ensure_ascii=False), without its cost for the usual plain ASCII strings."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


def _fast_body(seq: int, at: str, actor: str, action: str, subject_type: str, subject_id: str, payload: str) -> str:
    """canonical_json(body) built from the payload's stored text, without parsing it.

    The engine stores JSON with `canonical_json` (governance.db), so the stored text of a payload
    written by `record_event` is already canonical; keys here are in sorted order."""
    return (
        f'{{"action":{_q(action)},"actor":{_q(actor)},"at":{_q(at)},"payload":{payload},"seq":{seq},'
        f'"subject_id":{_q(subject_id)},"subject_type":{_q(subject_type)}}}'
    )


def verify_chain(session: Session, batch_size: int = 20000) -> ChainReport:
    """Recompute the chain from the first event; report the first event that does not fit.

    Reads plain rows (no ORM objects) and hashes each payload's stored text; only when that does
    not match (a payload stored in another JSON spelling) is it parsed and re-encoded."""
    from sqlalchemy import Text, cast

    expected_seq, prev, count = 1, GENESIS_HASH, 0
    sha256 = hashlib.sha256
    stmt = (
        select(
            AuditEvent.seq,
            AuditEvent.at,
            AuditEvent.actor,
            AuditEvent.action,
            AuditEvent.subject_type,
            AuditEvent.subject_id,
            cast(AuditEvent.payload, Text),
            AuditEvent.prev_hash,
            AuditEvent.hash,
        )
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=batch_size)
    )
    for seq, at, actor, action, subject_type, subject_id, payload, prev_hash, stored_hash in session.execute(stmt):
        count += 1
        if seq != expected_seq:
            problem = (
                f"event {expected_seq} is missing (next stored event is {seq}): an event was deleted or renumbered"
            )
            return ChainReport(False, count, expected_seq - 1, prev, expected_seq, problem)
        if prev_hash != prev:
            problem = (
                f"event {seq} ({action}) does not link to event {seq - 1}: events were deleted, inserted or reordered"
            )
            return ChainReport(False, count, seq - 1, prev, seq, problem)
        body = _fast_body(seq, at, actor, action, subject_type, subject_id, payload)
        if sha256((prev + body).encode()).hexdigest() != stored_hash:
            slow = {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "payload": json.loads(payload),
            }
            if event_hash(prev, slow) != stored_hash:
                problem = f"event {seq} ({action}) was altered: its content no longer matches its hash"
                return ChainReport(False, count, seq - 1, prev, seq, problem)
        prev, expected_seq = stored_hash, expected_seq + 1
    return ChainReport(True, count, expected_seq - 1, prev)


def events_for(session: Session, subject_ids: list[str]) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.subject_id.in_(subject_ids)).order_by(AuditEvent.seq)
    return list(session.scalars(stmt))
