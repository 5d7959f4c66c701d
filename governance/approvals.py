"""Four eyes: a batch runs only with an approval by another user, pinned to its exact content."""

from __future__ import annotations

from sqlalchemy.orm import Session

from governance.audit import record_event
from governance.batches import current_approval, get_batch, stored_content_sha256
from governance.errors import InvalidInput, InvalidState, PermissionDenied
from governance.records import Approval, Batch
from governance.users import require_role


def _decide(
    session: Session, actor: str | None, batch_id: str, decision: str, reason: str, expected_sha256: str | None
) -> Approval:
    batch = get_batch(session, batch_id)
    user = require_role(session, actor, "approver", "approve or reject batches")
    if user.id == batch.requested_by_id:
        raise PermissionDenied(f"{user.name} requested batch {batch.id} and cannot decide on it: another approver must")
    if batch.status != "submitted":
        raise InvalidState(f"batch {batch.id} is {batch.status}; only a submitted batch can be decided")
    if expected_sha256 and expected_sha256 != batch.content_sha256:
        raise InvalidState(
            f"batch {batch.id} content is {batch.content_sha256}, not the {expected_sha256} you reviewed: "
            "review it again with `atelier batch show`"
        )
    approval = Approval(
        batch=batch, decision=decision, decided_by=user, content_sha256=batch.content_sha256, reason=reason
    )
    session.add(approval)
    batch.status = decision
    session.flush()
    record_event(
        session,
        user.name,
        f"batch.{decision}",
        "batch",
        batch.id,
        {"approval_id": approval.id, "content_sha256": batch.content_sha256, "reason": reason},
    )
    return approval


def approve_batch(session: Session, actor: str | None, batch_id: str, expected_sha256: str | None = None) -> Approval:
    return _decide(session, actor, batch_id, "approved", "", expected_sha256)


def reject_batch(session: Session, actor: str | None, batch_id: str, reason: str) -> Approval:
    if not reason.strip():
        raise InvalidInput("a rejection needs a reason")
    return _decide(session, actor, batch_id, "rejected", reason.strip(), None)


def require_runnable(batch: Batch) -> Approval:
    """Invariant 1: refuse GPU work unless a live approval by another user pins this exact content."""
    approval = current_approval(batch)
    if approval is None or approval.decision != "approved":
        raise InvalidState(
            f"batch {batch.id} is {batch.status} and has no approval: an approver must run "
            f"`atelier batch approve {batch.id}` first"
        )
    if approval.decided_by_id == batch.requested_by_id:
        raise PermissionDenied(f"batch {batch.id} was approved by its own requester; it cannot run")
    actual = stored_content_sha256(batch)
    if approval.content_sha256 != batch.content_sha256 or actual != approval.content_sha256:
        raise InvalidState(
            f"batch {batch.id} content ({actual}) differs from what was approved "
            f"({approval.content_sha256}); it must be approved again"
        )
    if batch.status not in ("approved", "running", "completed", "failed"):
        raise InvalidState(f"batch {batch.id} is {batch.status}; it cannot run")
    return approval
