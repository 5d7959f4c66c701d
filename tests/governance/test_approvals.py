"""Four eyes (invariant 1): who may decide, what an approval pins, and what voids it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from governance.approvals import approve_batch, reject_batch, require_runnable
from governance.batches import edit_batch, get_batch, submit_batch
from governance.errors import InvalidState, NotFound, PermissionDenied
from governance.records import AuditEvent
from tests.governance.conftest import good_rows, write_csv


@pytest.fixture
def batch_id(sessions: sessionmaker[Session], tmp_path: Path) -> str:
    with sessions.begin() as s:
        return submit_batch(s, "nina", write_csv(tmp_path / "b.csv", good_rows()), "marketing").id


def _actions(sessions: sessionmaker[Session], subject: str) -> list[str]:
    with sessions() as s:
        return list(
            s.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == subject).order_by(AuditEvent.seq))
        )


def test_requester_cannot_approve_own_batch_even_as_approver(sessions, batch_id) -> None:
    with pytest.raises(PermissionDenied, match="requested batch"), sessions.begin() as s:
        approve_batch(s, "nina", batch_id)
    with sessions() as s:
        assert get_batch(s, batch_id).status == "submitted"
    assert _actions(sessions, batch_id) == ["batch.submitted"]


def test_non_approver_cannot_approve(sessions, batch_id) -> None:
    with pytest.raises(PermissionDenied, match="approver role"), sessions.begin() as s:
        approve_batch(s, "ops", batch_id)


def test_unknown_user_and_no_user_are_refused(sessions, batch_id) -> None:
    with pytest.raises(NotFound, match="unknown user 'zed'"), sessions.begin() as s:
        approve_batch(s, "zed", batch_id)
    with pytest.raises(PermissionDenied, match="--as NAME"), sessions.begin() as s:
        approve_batch(s, None, batch_id)


def test_approval_pins_content_and_allows_run(sessions, batch_id) -> None:
    with sessions.begin() as s:
        approval = approve_batch(s, "omar", batch_id)
        batch = get_batch(s, batch_id)
        assert approval.content_sha256 == batch.content_sha256
        assert require_runnable(batch).id == approval.id
    assert _actions(sessions, batch_id) == ["batch.submitted", "batch.approved"]


def test_unapproved_and_rejected_batches_cannot_run(sessions, batch_id) -> None:
    with sessions() as s, pytest.raises(InvalidState, match="no approval"):
        require_runnable(get_batch(s, batch_id))
    with sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "off-brand")
    with sessions() as s, pytest.raises(InvalidState):
        require_runnable(get_batch(s, batch_id))


def test_editing_voids_the_approval(sessions, batch_id, tmp_path) -> None:
    with sessions.begin() as s:
        approve_batch(s, "omar", batch_id)
    rows = good_rows()
    rows[1]["prompt"] = "a different product"
    with sessions.begin() as s:
        batch = edit_batch(s, "nina", batch_id, write_csv(tmp_path / "edited.csv", rows))
        assert batch.status == "submitted"
    with sessions() as s, pytest.raises(InvalidState, match="no approval"):
        require_runnable(get_batch(s, batch_id))
    assert _actions(sessions, batch_id)[-1] == "batch.edited"
    with sessions.begin() as s:  # a fresh approval pins the new content
        approval = approve_batch(s, "omar", batch_id)
        assert approval.content_sha256 == get_batch(s, batch_id).content_sha256
        require_runnable(get_batch(s, batch_id))


def test_content_changed_behind_atelier_s_back_is_refused(sessions, batch_id) -> None:
    with sessions.begin() as s:
        approve_batch(s, "omar", batch_id)
    with sessions.begin() as s:
        s.execute(
            text("UPDATE prompts SET prompt = 'something else' WHERE batch_id = :b AND row_id = 'sku-0'"),
            {"b": batch_id},
        )
    with sessions() as s, pytest.raises(InvalidState, match="differs from what was approved"):
        require_runnable(get_batch(s, batch_id))


def test_approval_for_stale_content_hash_is_refused(sessions, batch_id) -> None:
    with pytest.raises(InvalidState, match="not the"), sessions.begin() as s:
        approve_batch(s, "omar", batch_id, expected_sha256="0" * 64)


def test_reject_needs_a_reason(sessions, batch_id) -> None:
    from governance.errors import InvalidInput

    with pytest.raises(InvalidInput, match="reason"), sessions.begin() as s:
        reject_batch(s, "omar", batch_id, "  ")
