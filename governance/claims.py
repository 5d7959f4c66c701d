"""Work claiming: a batch's planned images are cut into fixed chunks that workers claim with leases.

- `plan_chunks` cuts the batch once (idempotent; the first planner's chunk size wins).
- `claim_chunk` hands one pending chunk, or one whose lease expired (its worker died), to a worker:
  `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent claimers never wait on or get
  the same chunk; on SQLite a single conditional UPDATE, atomic under its one-writer lock.
- `complete_chunk` finishes a chunk once.

What makes this exactly-once is not the lease but the idempotent steps under it: a chunk claimed
twice (an expired lease whose worker was only slow) regenerates images whose ids, seeds and keys
are the same, and `finalize_image` keeps the first record.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.batches import get_batch
from governance.records import ATELIER_NAMESPACE, WorkChunk, utcnow
from governance.runs import planned_images


def plan_chunks(session: Session, batch_id: str, chunk_size: int) -> int:
    """Cut the batch into chunks once; returns the number of chunks."""
    existing = session.scalar(select(func.count()).select_from(WorkChunk).where(WorkChunk.batch_id == batch_id))
    if existing:
        return int(existing)
    planned = planned_images(get_batch(session, batch_id))
    try:
        with session.begin_nested():  # another worker may be planning the same batch right now
            for position, start in enumerate(range(0, len(planned), chunk_size)):
                session.add(
                    WorkChunk(
                        id=str(uuid.uuid5(ATELIER_NAMESPACE, f"chunk:{batch_id}:{position}")),
                        batch_id=batch_id,
                        position=position,
                        image_ids=[p.image_id for p in planned[start : start + chunk_size]],
                    )
                )
    except IntegrityError:
        # a COUNT always returns one row: scalar_one() says so (and would raise, not return None, otherwise)
        planned_chunks = select(func.count()).select_from(WorkChunk).where(WorkChunk.batch_id == batch_id)
        return int(session.execute(planned_chunks).scalar_one())
    return -(-len(planned) // chunk_size)


def _claimable(batch_id: str, now: datetime) -> ColumnElement[bool]:
    return (WorkChunk.batch_id == batch_id) & (
        (WorkChunk.status == "pending") | ((WorkChunk.status == "claimed") & (WorkChunk.lease_until < now))
    )


def claim_chunk(session: Session, batch_id: str, worker: str, lease_seconds: float) -> WorkChunk | None:
    """Claim the next chunk for `worker`; None when every chunk is done or leased to a live worker."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    if session.get_bind().dialect.name == "postgresql":
        chunk_id = session.scalar(
            select(WorkChunk.id)
            .where(_claimable(batch_id, now))
            .order_by(WorkChunk.position)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if chunk_id is None:
            return None
        session.execute(
            update(WorkChunk)
            .where(WorkChunk.id == chunk_id)
            .values(status="claimed", claimed_by=worker, lease_until=lease_until, attempts=WorkChunk.attempts + 1)
        )
    else:
        chunk_id = session.scalar(
            update(WorkChunk)
            .where(
                WorkChunk.id
                == select(WorkChunk.id)
                .where(_claimable(batch_id, now))
                .order_by(WorkChunk.position)
                .limit(1)
                .scalar_subquery()
            )
            .where(_claimable(batch_id, now))
            .values(status="claimed", claimed_by=worker, lease_until=lease_until, attempts=WorkChunk.attempts + 1)
            .returning(WorkChunk.id)
        )
        if chunk_id is None:
            return None
    chunk = session.get(WorkChunk, chunk_id, populate_existing=True)
    assert chunk is not None
    record_event(
        session,
        worker,
        "chunk.claimed",
        "chunk",
        chunk.id,
        {
            "batch_id": batch_id,
            "position": chunk.position,
            "attempt": chunk.attempts,
            "lease_until": lease_until.isoformat(),
        },
    )
    return chunk


def renew_lease(session: Session, chunk_id: str, worker: str, lease_seconds: float) -> bool:
    result = session.execute(
        update(WorkChunk)
        .where(WorkChunk.id == chunk_id, WorkChunk.claimed_by == worker, WorkChunk.status == "claimed")
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def complete_chunk(session: Session, chunk_id: str, worker: str) -> bool:
    """Mark a chunk done (once: a second completion, by a slow worker whose lease expired, is a no-op)."""
    result = session.execute(
        update(WorkChunk)
        .where(WorkChunk.id == chunk_id, WorkChunk.status != "done")
        .values(status="done", finished_at=utcnow(), lease_until=None)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    record_event(session, worker, "chunk.completed", "chunk", chunk_id, {})
    return True


def seconds_until_claimable(session: Session, batch_id: str) -> float | None:
    """For a worker that found nothing to claim: None when every chunk of the batch is done;
    otherwise how long until the earliest lease held by another worker runs out (0 when a chunk
    is pending again). A surviving worker waits that long and claims again, so a batch whose
    other worker was killed is finished by the survivor, not left for someone to re-run."""
    left, pending, earliest = session.execute(
        select(
            func.count(), func.count(case((WorkChunk.status == "pending", 1))), func.min(WorkChunk.lease_until)
        ).where(WorkChunk.batch_id == batch_id, WorkChunk.status != "done")
    ).one()
    if not left:
        return None
    if pending or earliest is None:
        return 0.0
    return max(0.0, (earliest - utcnow()).total_seconds())


def chunk_progress(session: Session, batch_id: str) -> dict[str, int]:
    rows = session.execute(
        select(WorkChunk.status, func.count()).where(WorkChunk.batch_id == batch_id).group_by(WorkChunk.status)
    ).all()
    return {status: int(n) for status, n in rows}


def release_chunks(session: Session, chunk_ids: list[str], worker: str) -> int:
    """Hand chunks back to the queue at once (a worker that failed cleanly need not wait for its lease)."""
    if not chunk_ids:
        return 0
    released = list(
        session.scalars(
            update(WorkChunk)
            .where(WorkChunk.id.in_(chunk_ids), WorkChunk.claimed_by == worker, WorkChunk.status == "claimed")
            .values(status="pending", claimed_by=None, lease_until=None)
            .returning(WorkChunk.id)
        )
    )
    for chunk_id in sorted(released):  # only what this worker still held: the audit says what happened
        record_event(session, worker, "chunk.released", "chunk", chunk_id, {})
    return len(released)
