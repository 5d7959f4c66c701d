"""Four eyes: a batch runs only with an approval by another user, pinned to its exact content."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from governance.audit import record_event
from governance.batches import current_approval, get_batch, stored_content_sha256
from governance.errors import InvalidInput, InvalidState, PermissionDenied
from governance.pipelines import record_sha256
from governance.records import Approval, Batch
from governance.results import Result
from governance.text import describe, first_unsafe
from governance.users import require_role

if TYPE_CHECKING:
    from governance.screening import PromptPolicy


@dataclass(frozen=True)
class PriorDecision(Result):
    """A decision already taken on the same content (this batch or another)."""

    batch_id: str
    approval_id: str
    decision: str
    decided_by: str
    decided_at: datetime
    reason: str
    voided: bool


def prior_decisions(session: Session, content_sha256: str) -> list[PriorDecision]:
    """Every decision ever taken on this exact content, oldest first: what an approver must see."""
    stmt = (
        select(Approval)
        .where(Approval.content_sha256 == content_sha256)
        .options(joinedload(Approval.decided_by))
        .order_by(Approval.decided_at)
    )
    return [
        PriorDecision(a.batch_id, a.id, a.decision, a.decided_by.name, a.decided_at, a.reason, a.voided_at is not None)
        for a in session.scalars(stmt)
    ]


def rejections_of(session: Session, content_sha256: str) -> list[PriorDecision]:
    return [d for d in prior_decisions(session, content_sha256) if d.decision == "rejected"]


def describe_rejection(r: PriorDecision) -> str:
    return f"rejected by {r.decided_by} on {r.decided_at:%Y-%m-%d %H:%M} UTC (batch {r.batch_id}): {r.reason!r}"


def _decide(
    session: Session,
    actor: str | None,
    batch_id: str,
    decision: str,
    reason: str,
    expected_sha256: str,
    acknowledge_rejections: bool = False,
    acknowledge_flags: bool = False,
) -> Approval:
    from governance.screening import describe_flag, flags_of

    batch = get_batch(session, batch_id)
    user = require_role(session, actor, "approver", "approve or reject batches")
    if user.id == batch.requested_by_id:
        raise PermissionDenied(f"{user.name} requested batch {batch.id} and cannot decide on it: another approver must")
    from governance.records import CatalogueItem, PromptTemplate

    authored = session.scalars(
        select(PromptTemplate.name)
        .join(CatalogueItem, CatalogueItem.template_id == PromptTemplate.id)
        .where(CatalogueItem.batch_id == batch.id, PromptTemplate.author_id == user.id)
        .distinct()
    ).all()
    if authored:  # the rows are the author's words, as a standing approval of their own template would be
        raise PermissionDenied(
            f"{user.name} wrote template {', '.join(sorted(authored))}, which rendered rows of batch {batch.id}: "
            "another approver must decide on it"
        )
    if batch.status != "submitted":
        raise InvalidState(f"batch {batch.id} is {batch.status}; only a submitted batch can be decided")
    if not expected_sha256:
        raise InvalidInput(
            f"a decision names the content it was taken on: content_sha256 of batch {batch.id} "
            "(`atelier batch show` displays it)"
        )
    if expected_sha256.strip().lower() != batch.content_sha256:
        raise InvalidState(
            f"batch {batch.id} content is {batch.content_sha256}, not the {expected_sha256} you reviewed: "
            "review it again with `atelier batch show`"
        )
    rejected = rejections_of(session, batch.content_sha256)
    if decision == "approved" and rejected and not acknowledge_rejections:
        raise InvalidState(
            f"this exact content was {describe_rejection(rejected[-1])}"
            + (f" (and {len(rejected) - 1} earlier rejection(s))" if len(rejected) > 1 else "")
            + "; approving it needs acknowledge_rejections"
        )
    flags = flags_of(batch.screening)
    if decision == "approved" and flags and not acknowledge_flags:
        raise InvalidState(
            f"batch {batch.id} has {len(flags)} prompt-policy flag(s), e.g. {describe_flag(flags[0])}: read each "
            "in `atelier batch show`; approving needs acknowledge_flags"
        )
    approval = Approval(
        batch=batch,
        decision=decision,
        decided_by=user,
        content_sha256=batch.content_sha256,
        reason=reason,
        pipelines_sha256=record_sha256(batch.pipelines),
    )
    if decision == "approved" and flags:
        approval.acknowledged_flags = [f.to_dict() for f in flags]
    session.add(approval)
    batch.status = decision
    session.flush()
    payload: dict[str, object] = {
        "approval_id": approval.id,
        "content_sha256": batch.content_sha256,
        "pipelines_sha256": approval.pipelines_sha256,
        "reason": reason,
    }
    if decision == "approved" and rejected:
        payload["acknowledged_rejections"] = [r.approval_id for r in rejected]
    if decision == "approved" and flags:
        payload["acknowledged_flags"] = [f"row {f.row_id} {f.column}: {f.rule} ({f.matched})" for f in flags]
    record_event(session, user.name, f"batch.{decision}", "batch", batch.id, payload)
    return approval


def approve_batch(
    session: Session,
    actor: str | None,
    batch_id: str,
    expected_sha256: str,
    acknowledge_rejections: bool = False,
    acknowledge_flags: bool = False,
) -> Approval:
    """Approve a batch's exact content (`expected_sha256`: what the approver reviewed). Content that
    was rejected before (in this batch or another) is approved only with `acknowledge_rejections`,
    after seeing each rejection, its reason and its author; a batch with prompt-policy review flags
    only with `acknowledge_flags`, after seeing each. The approval and its event record both."""
    return _decide(session, actor, batch_id, "approved", "", expected_sha256, acknowledge_rejections, acknowledge_flags)


def reject_batch(session: Session, actor: str | None, batch_id: str, reason: str, expected_sha256: str) -> Approval:
    if not reason.strip():
        raise InvalidInput("a rejection needs a reason")
    if (unsafe := first_unsafe(reason)) is not None:
        raise InvalidInput(f"the reason contains {describe(unsafe[1])}: write it as plain text")
    return _decide(session, actor, batch_id, "rejected", reason.strip(), expected_sha256)


def require_runnable(batch: Batch, policy: PromptPolicy | None = None) -> Approval:
    """Invariant 1: refuse GPU work unless a live approval by another user pins this exact content;
    with `policy` (the prompt policy in force at run start), also unless the rows still pass it
    (governance.screening.recheck)."""
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
    if approval.pipelines_sha256 is not None and approval.pipelines_sha256 != record_sha256(batch.pipelines):
        raise InvalidState(
            f"batch {batch.id}: its pipeline configurations differ from those approved "
            f"(definitions sha256 {record_sha256(batch.pipelines)}, approved {approval.pipelines_sha256}); "
            "`atelier audit verify` names the change; it must be approved again"
        )
    if batch.status not in ("approved", "running", "completed", "failed"):
        raise InvalidState(f"batch {batch.id} is {batch.status}; it cannot run")
    if approval.standing_approval_id is not None:  # a catalogue batch: the standing approval still holds
        from sqlalchemy.orm import object_session

        from governance.catalogue import check_standing

        session = object_session(batch)
        if session is None:
            raise InvalidState(f"batch {batch.id}: cannot check its standing approval outside a session")
        check_standing(session, batch, approval)
    if policy is not None:
        from governance.batches import stored_row
        from governance.screening import recheck

        recheck(policy, batch.screening, approval.acknowledged_flags or [], [stored_row(p) for p in batch.prompts])
    return approval
